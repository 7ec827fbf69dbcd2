#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    attitude_codec::fuzzing::decode_all(data);
});
