//! Threshold rules on metrics (`[[alerts.threshold]]`): a metric (summed over the series whose
//! labels match), or its per-second rate, above or below a value for a while raises one alert;
//! it may raise another only after the condition has cleared. Pure code over plain samples.

use super::config::ThresholdRule;

/// The sum of the samples whose labels include every `(name, value)` of `want`, or None when
/// no series matches (a metric that has no such series yet is not "0").
pub fn select(
    samples: &[(Vec<(String, String)>, f64)],
    want: &std::collections::BTreeMap<String, String>,
) -> Option<f64> {
    let mut sum = None;
    for (labels, v) in samples {
        let ok = want
            .iter()
            .all(|(k, w)| labels.iter().any(|(lk, lv)| lk == k && lv == w));
        if ok {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[derive(Debug, Default, Clone)]
struct RuleState {
    /// The previous value and when, for rates.
    prev: Option<(f64, u64)>,
    /// Since when the condition holds.
    since: Option<u64>,
    firing: bool,
}

/// The state of every rule between ticks.
#[derive(Debug, Default)]
pub struct Thresholds {
    state: Vec<RuleState>,
}

/// A rule that started firing: what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub observed: f64,
    pub detail: String,
}

impl Thresholds {
    pub fn new(rules: usize) -> Self {
        Self {
            state: vec![RuleState::default(); rules],
        }
    }

    /// Feeds rule `i` the metric's current value (None: no matching series) at `now_ns`;
    /// returns what fired when the condition has held for the rule's `for` and was not
    /// already firing.
    pub fn observe(
        &mut self,
        i: usize,
        rule: &ThresholdRule,
        value: Option<f64>,
        now_ns: u64,
    ) -> Option<Fired> {
        let st = &mut self.state[i];
        let Some(v) = value else {
            st.since = None;
            st.firing = false;
            return None;
        };
        let observed = if rule.rate {
            let prev = st.prev.replace((v, now_ns));
            match prev {
                Some((pv, pt)) if now_ns > pt => {
                    // A counter that went down was reset: no rate this tick.
                    if v < pv {
                        return None;
                    }
                    (v - pv) / ((now_ns - pt) as f64 / 1e9)
                }
                _ => return None,
            }
        } else {
            v
        };
        let holds = match (rule.above, rule.below) {
            (Some(a), _) => observed > a,
            (_, Some(b)) => observed < b,
            _ => false,
        };
        if !holds {
            st.since = None;
            st.firing = false;
            return None;
        }
        let since = *st.since.get_or_insert(now_ns);
        if st.firing || now_ns - since < rule.for_.as_nanos() as u64 {
            return None;
        }
        st.firing = true;
        let what = if rule.rate {
            format!("rate of {}", rule.metric)
        } else {
            rule.metric.clone()
        };
        let labels = if rule.labels.is_empty() {
            String::new()
        } else {
            format!(
                "{{{}}}",
                rule.labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let (cmp, limit) = match (rule.above, rule.below) {
            (Some(a), _) => ("above", a),
            (_, Some(b)) => ("below", b),
            _ => unreachable!("checked above"),
        };
        Some(Fired {
            observed,
            detail: format!(
                "threshold {}: {what}{labels} is {observed:.1}, {cmp} {limit} for {:.0} s",
                rule.name,
                rule.for_.as_secs_f64()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::score::Level;
    use std::time::Duration;

    fn rule(rate: bool) -> ThresholdRule {
        ThresholdRule {
            name: "rx".into(),
            metric: "netmon_interface_bytes_total".into(),
            labels: [("direction".to_string(), "rx".to_string())].into(),
            rate,
            above: Some(1000.0),
            below: None,
            for_: Duration::from_secs(3),
            severity: Level::Medium,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn selects_and_sums_matching_series() {
        let l = |d: &str, i: &str| {
            vec![
                ("direction".to_string(), d.to_string()),
                ("interface".to_string(), i.to_string()),
            ]
        };
        let samples = vec![
            (l("rx", "a"), 5.0),
            (l("rx", "b"), 7.0),
            (l("tx", "a"), 100.0),
        ];
        assert_eq!(select(&samples, &rule(false).labels), Some(12.0));
        let none = [("interface".to_string(), "zz".to_string())].into();
        assert_eq!(select(&samples, &none), None);
    }

    #[test]
    fn a_rate_must_hold_for_the_whole_window_and_fires_once() {
        let r = rule(true);
        let mut t = Thresholds::new(1);
        let mut total = 0.0;
        let mut fired = Vec::new();
        // 2000 B/s for 10 s, a dip, then 2000 B/s again.
        for sec in 0..20u64 {
            total += if sec == 12 { 10.0 } else { 2000.0 };
            if let Some(f) = t.observe(0, &r, Some(total), sec * S) {
                fired.push((sec, f));
            }
        }
        // First rate at 1 s; held from 1 s; fires at 4 s. Cleared at 12 s; held from 13 s;
        // fires again at 16 s.
        assert_eq!(
            fired.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![4, 16]
        );
        assert!(
            fired[0]
                .1
                .detail
                .contains("rate of netmon_interface_bytes_total")
                && fired[0].1.detail.contains("above 1000"),
            "{}",
            fired[0].1.detail
        );
        assert!((fired[0].1.observed - 2000.0).abs() < 1e-6);
    }

    #[test]
    fn values_below_and_missing_series() {
        let mut r = rule(false);
        r.above = None;
        r.below = Some(1.0);
        r.for_ = Duration::ZERO;
        let mut t = Thresholds::new(1);
        assert!(t.observe(0, &r, None, 0).is_none());
        assert!(t.observe(0, &r, Some(0.0), S).is_some());
        assert!(t.observe(0, &r, Some(0.0), 2 * S).is_none());
        assert!(t.observe(0, &r, Some(5.0), 3 * S).is_none());
        assert!(t.observe(0, &r, Some(0.0), 4 * S).is_some());
    }
}
