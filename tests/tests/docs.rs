//! The published benchmark report agrees with its sources.

/// BENCHMARKS.md ends with the section `netmon-bench` writes from tests/bench-why.md: an edit
/// of one without the other (the report is regenerated only by a full bench run) fails here.
#[test]
fn benchmarks_md_carries_the_current_why_section() {
    let report = include_str!("../../BENCHMARKS.md");
    let why = include_str!("../bench-why.md");
    assert!(
        report.ends_with(why),
        "BENCHMARKS.md's last section differs from tests/bench-why.md: copy the file's text \
         over the section from \"## Where targets are missed, and why\" on"
    );
    assert_eq!(
        report
            .matches("## Where targets are missed, and why")
            .count(),
        1
    );
}
