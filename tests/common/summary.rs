//! Reading the one-line `--json` summary of `l4lb-loadgen` (the tests of the generator alone
//! and of the generator through the balancer).

/// A number field (`"key":123.4`). Keys are unique in the summaries except inside `errors`,
/// so `errors.total` is read as `"total"`.
pub fn json_num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} not a number in {json}"))
}

/// The latency percentiles p50, p90, p99, p99.9 and the maximum, in that order.
pub fn latency_percentiles(json: &str) -> Vec<f64> {
    ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| json_num(json, k))
        .collect()
}
