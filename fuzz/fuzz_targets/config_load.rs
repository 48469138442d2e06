//! Configuration files are untrusted: any text gives a configuration or errors of one line
//! per problem, never a panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vipgate_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml_str(text, HashMap::new()) {
        assert!(!e.problems().is_empty());
        for p in e.problems() {
            let line = p.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        }
    }
});
