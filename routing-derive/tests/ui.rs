//! Compile-fail cases: each `tests/ui/*.rs` must fail with the committed `.stderr`.
//! Regenerate with `TRYBUILD=overwrite cargo test -p routing-derive --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
