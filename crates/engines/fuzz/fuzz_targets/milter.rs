#![no_main]

// What a hostile or broken milter can send: length-prefixed packets through the reply parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    attitude_engines::milter::fuzzing::replies(data);
});
