//! One endpoint's policy walk for one direction and stage (semantics §4.2, §4.4): tiers in order, the
//! policies of a tier that select the endpoint in order, rules in order; then profiles.

use super::matching::rule_matches;
use crate::packet::PacketHeader;
use crate::resolve::{Direction, Endpoint, ResolvedNode, Stage};
use crate::resource::{Action, TierDefault};
use crate::verdict::{LogEvent, RuleOwner, RuleRef};
use crate::walk_end::{NamedWalkEnd, WalkEnd};

/// What an endpoint is to the walk: its labels pick policies, its id names it in explanations.
#[derive(Debug)]
pub struct WalkInput<'a> {
    pub world: &'a ResolvedNode,
    pub endpoint: &'a Endpoint,
    pub direction: Direction,
    pub stage: Stage,
    pub pkt: &'a PacketHeader,
}

/// Walks the tiers (semantics §4.2). Log rules append to `logs` and continue; every Log rule the walk
/// passes is reported, matched or not (`LogEvent::matched`; semantics §9.1, its rate limit).
pub fn walk_tiers(input: &WalkInput<'_>, logs: &mut Vec<LogEvent>) -> NamedWalkEnd {
    let WalkInput { world, endpoint, direction, stage, pkt } = *input;
    for tier in world.tiers.iter() {
        let mut present = false;
        let mut passed = false;
        'policies: for &pi in &tier.policies {
            let policy = &world.policies[pi];
            if !(stage.holds(policy) && policy.applies(direction) && policy.selector.matches(&endpoint.labels)) {
                continue;
            }
            present = true;
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                let matched = rule_matches(rule, pkt, world);
                let reached_log = rule.action == Action::Log && rule.in_family(pkt.family());
                if !(matched || reached_log) {
                    continue;
                }
                let at = || RuleRef {
                    stage,
                    direction,
                    endpoint: endpoint.id.clone(),
                    owner: RuleOwner::Policy { tier: tier.name.clone(), id: policy.id.clone() },
                    index,
                    action: rule.action,
                };
                match rule.action {
                    Action::Log => logs.push(LogEvent { matched, ..log_event(world, at()) }),
                    Action::Allow => return WalkEnd::Allow(at()),
                    Action::Deny => return WalkEnd::Deny(at()),
                    Action::Pass => {
                        passed = true;
                        break 'policies;
                    }
                }
            }
        }
        if !present {
            // A tier with no enforced policy for this endpoint and direction is invisible.
            continue;
        }
        // Untracked and pre-DNAT tiers never end in a drop (semantics §2.1).
        let default = if stage.forces_pass() { TierDefault::Pass } else { tier.default_action };
        if !passed && default == TierDefault::Deny {
            return WalkEnd::EndOfTier(tier.name.clone());
        }
    }
    WalkEnd::FellThrough
}

/// Runs the endpoint's profiles in order (semantics §4.2, §1.4). A missing profile denies; Pass in a profile
/// ends that profile only.
pub fn walk_profiles(input: &WalkInput<'_>, logs: &mut Vec<LogEvent>) -> NamedWalkEnd {
    let WalkInput { world, endpoint, direction, stage, pkt } = *input;
    for name in &endpoint.profiles {
        let at = |index, action| RuleRef {
            stage,
            direction,
            endpoint: endpoint.id.clone(),
            owner: RuleOwner::Profile(name.clone()),
            index,
            action,
        };
        let Some(profile) = world.profiles.get(name) else {
            return WalkEnd::Deny(at(0, Action::Deny));
        };
        for (index, rule) in profile.rules(direction).iter().enumerate() {
            let matched = rule_matches(rule, pkt, world);
            let reached_log = rule.action == Action::Log && rule.in_family(pkt.family());
            if !(matched || reached_log) {
                continue;
            }
            match rule.action {
                Action::Log => logs.push(LogEvent { matched, ..log_event(world, at(index, Action::Log)) }),
                Action::Allow => return WalkEnd::Allow(at(index, Action::Allow)),
                Action::Deny => return WalkEnd::Deny(at(index, Action::Deny)),
                Action::Pass => break,
            }
        }
    }
    WalkEnd::NoProfileMatched
}

/// The log prefix of a Log rule with its placeholders filled in (semantics §9.1).
pub(crate) fn log_event(world: &ResolvedNode, rule: RuleRef) -> LogEvent {
    let template = &world.node.felix.log_prefix;
    let (tier, kind, name, qualified) = match &rule.owner {
        RuleOwner::Policy { tier, id } => {
            let name = id.felix_name();
            let qualified = match &id.namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            };
            (tier.clone(), id.kind.short_name().to_string(), name, qualified)
        }
        RuleOwner::Profile(p) => (String::new(), "pro".to_string(), p.clone(), p.clone()),
    };
    let mut prefix = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            prefix.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => prefix.push_str(&tier),
            Some('k') => prefix.push_str(&kind),
            Some('n') => prefix.push_str(&name),
            Some('p') => prefix.push_str(&qualified),
            Some(other) => {
                prefix.push('%');
                prefix.push(other);
            }
            None => prefix.push('%'),
        }
    }
    LogEvent { rule, prefix, matched: true }
}
