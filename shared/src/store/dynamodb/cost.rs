//! What DynamoDB charges, computed the way it bills: item size is the sum of
//! attribute name and value sizes; a write costs one unit per started KB
//! (two inside transactions); a read one unit per started 4 KB (half when
//! eventually consistent). Used when the service returns no (or, as with
//! emulators, placeholder) ConsumedCapacity.

use crate::job::{Cost, JobId};
use crate::metrics::{Metric, MetricsSink, NoMetrics};
use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// DynamoDB stores numbers as base-100 digits: about one byte per two
/// significant digits, plus one.
fn number_size(n: &str) -> usize {
    let digits = n
        .trim_start_matches('-')
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    digits.div_ceil(2) + 1
}

pub fn write_units(bytes: usize) -> f64 {
    bytes.max(1).div_ceil(1024) as f64
}

pub fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.max(1).div_ceil(4096) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Cost accumulated per job by this process and not yet added to the job
/// item. Flushed by the writes that touch the job item anyway, so counting
/// costs no extra request.
#[derive(Debug)]
pub struct Meter {
    pending: Mutex<HashMap<JobId, Cost>>,
    /// Trust ConsumedCapacity from the service (false against emulators).
    pub trust_consumed: bool,
    /// Where conflicts are reported as they happen (the job item only
    /// learns of them at the next flush).
    pub metrics: Arc<dyn MetricsSink>,
}

impl Meter {
    pub fn new(trust_consumed: bool) -> Self {
        Meter {
            pending: Mutex::default(),
            trust_consumed,
            metrics: Arc::new(NoMetrics),
        }
    }

    /// Records one request: `computed` unless the service reported capacity
    /// we trust.
    pub fn record(&self, job: &JobId, computed: Cost, consumed: &[ConsumedCapacity]) {
        let mut cost = computed;
        if self.trust_consumed && !consumed.is_empty() {
            let (mut w, mut r) = (0.0, 0.0);
            for c in consumed {
                w += c.write_capacity_units().unwrap_or(0.0);
                r += c.read_capacity_units().unwrap_or(0.0);
                if c.write_capacity_units().is_none() && c.read_capacity_units().is_none() {
                    // Some operations only report the total.
                    if computed.write_units > 0.0 {
                        w += c.capacity_units().unwrap_or(0.0);
                    } else {
                        r += c.capacity_units().unwrap_or(0.0);
                    }
                }
            }
            cost.write_units = w;
            cost.read_units = r;
        }
        self.pending
            .lock()
            .expect("meter poisoned")
            .entry(job.clone())
            .or_default()
            .add(cost);
    }

    /// Takes what is pending for `job`, plus `own` (the cost of the request
    /// that will carry it), for an `ADD` on the job item.
    pub fn take(&self, job: &JobId, own: Cost) -> Cost {
        let mut cost = self
            .pending
            .lock()
            .expect("meter poisoned")
            .remove(job)
            .unwrap_or_default();
        cost.add(own);
        cost
    }

    /// Counts a write turned away by a conflict (or throttling) and retried.
    pub fn conflict(&self, job: &JobId) {
        self.metrics.record(Metric::Conflict);
        self.pending
            .lock()
            .expect("meter poisoned")
            .entry(job.clone())
            .or_default()
            .conflicts += 1;
    }

    /// Puts back what a failed flush took (its own request still happened).
    pub fn restore(&self, job: &JobId, cost: Cost) {
        self.pending
            .lock()
            .expect("meter poisoned")
            .entry(job.clone())
            .or_default()
            .add(cost);
    }
}

pub fn write(bytes: usize) -> Cost {
    Cost {
        requests: 1,
        write_units: write_units(bytes),
        ..Cost::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_billing_rules() {
        let mut item = HashMap::new();
        item.insert("pk".to_string(), AttributeValue::S("abc".into()));
        item.insert("n".to_string(), AttributeValue::N("12345".into()));
        item.insert("b".to_string(), AttributeValue::B(vec![0u8; 10].into()));
        assert_eq!(item_size(&item), 2 + 3 + 1 + 4 + 1 + 10);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(100, false), 0.5);
        assert_eq!(read_units(4097, true), 2.0);
    }

    #[test]
    fn meter_flushes_pending_cost_once() {
        let m = Meter::new(false);
        let job = JobId::new("j");
        m.record(&job, write(2000), &[]);
        let taken = m.take(&job, write(100));
        assert_eq!(taken.requests, 2);
        assert_eq!(taken.write_units, 3.0);
        assert_eq!(m.take(&job, Cost::default()).requests, 0);
    }
}
