//! Reading the one-line `--json` summary of `l4lb-loadgen` (the tests of the generator alone
//! and of the generator through the balancer), parsed by serde_json.

use serde_json::Value;

/// A number field anywhere in the summary, by its key: keys are unique in the summaries
/// (`errors.total` is read as `"total"`, a backend's count as its address). Panics when the
/// summary is not JSON, or the key is missing, not a number or there more than once.
pub fn json_num(json: &str, key: &str) -> f64 {
    let v: Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("not a JSON summary ({e}): {json}"));
    let mut found = Vec::new();
    find_key(&v, key, &mut found);
    match found[..] {
        [one] => one
            .as_f64()
            .unwrap_or_else(|| panic!("{key} not a number in {json}")),
        [] => panic!("{key} missing in {json}"),
        _ => panic!("{key} more than once in {json}"),
    }
}

/// Every value under `key`, at any depth.
fn find_key<'a>(v: &'a Value, key: &str, found: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key {
                    found.push(child);
                }
                find_key(child, key, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| find_key(i, key, found)),
        _ => {}
    }
}

/// The latency percentiles p50, p90, p99, p99.9 and the maximum, in that order.
pub fn latency_percentiles(json: &str) -> Vec<f64> {
    ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| json_num(json, k))
        .collect()
}
