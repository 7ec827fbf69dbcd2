#![no_main]

// What a hostile backend can send, through the reply reader of backend connections.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    attitude_codec::fuzzing::replies_all(data);
});
