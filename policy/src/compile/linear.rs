//! A plain first-match scan over a program's terms, predicate by predicate: the baseline the classifier is
//! benchmarked against, and a second oracle for it in tests.

use super::classifier::FlowKey;
use super::terms::{Conditions, Term, TupleCond, NO_VALUE};

impl Conditions {
    /// Whether every predicate holds for `key`.
    pub fn holds(&self, key: &FlowKey) -> bool {
        self.src_ip.as_ref().is_none_or(|s| s.contains(key.src_ip))
            && self.dst_ip.as_ref().is_none_or(|s| s.contains(key.dst_ip))
            && self.holds_apart_from_addresses(key)
    }

    /// Whether every predicate but the two address ones holds for `key`.
    pub fn holds_apart_from_addresses(&self, key: &FlowKey) -> bool {
        let tuple_ok = |cond: &TupleCond, ip: u128, port: u32| match cond {
            TupleCond::Any => true,
            TupleCond::In(s) => port != NO_VALUE && s.contains(&(ip, (key.proto & 0xff) as u8, port as u16)),
            TupleCond::NotIn(s) => port == NO_VALUE || !s.contains(&(ip, (key.proto & 0xff) as u8, port as u16)),
        };
        self.proto.contains(key.proto as u128)
            && self.src_port.as_ref().is_none_or(|s| s.contains(key.src_port as u128))
            && self.dst_port.as_ref().is_none_or(|s| s.contains(key.dst_port as u128))
            && self.icmp.as_ref().is_none_or(|s| s.contains(key.icmp as u128))
            && tuple_ok(&self.src_tuple, key.src_ip, key.src_port)
            && tuple_ok(&self.dst_tuple, key.dst_ip, key.dst_port)
    }
}

/// The first term at or after `start` whose predicates hold, by scanning.
pub fn first_match_linear(terms: &[Term], key: &FlowKey, start: usize) -> Option<usize> {
    terms.iter().enumerate().skip(start).find(|(_, t)| t.conditions.holds(key)).map(|(i, _)| i)
}
