//! The manifest loader on arbitrary text: whatever a file holds (aliases nested into billions of values,
//! thousands of nested lists, NUL bytes, malformed resources), loading ends in resources or an error with a
//! position, in bounded time and memory, never a panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

use calxdp_policy::resource::load_text;
use calxdp_policy::yaml::Origin;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = load_text(text, &Origin::file("fuzz.yaml")) {
        assert!(e.line > 0 || e.field.is_empty(), "an error without a position: {e}");
    }
});
