//! libfaketime, for the checker's clock-skew fault.

/// Whether libfaketime is installed; `false` after printing why the calling test is skipped,
/// and a panic instead when `FENCELOCK_REQUIRE_FAKETIME=1`.
pub fn available() -> bool {
    let missing = match fencelock::process::faketime_library() {
        Ok(_) => return true,
        Err(why) => why,
    };
    let required = std::env::var("FENCELOCK_REQUIRE_FAKETIME").is_ok_and(|v| v == "1");
    assert!(!required, "FENCELOCK_REQUIRE_FAKETIME=1 but {missing}");
    eprintln!("skipped: {missing}");
    false
}
