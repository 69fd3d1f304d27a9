//! Who walks an endpoint's policies inside the hooks: the interpreter of `walk.rs`, or compiled programs.
//! The node model follows the hooks the same way for both, so the two can only differ in the walks.

use super::walk::{log_event, walk_profiles, walk_tiers, WalkInput};
use crate::ids::EndpointRef;
use crate::packet::PacketHeader;
use crate::resolve::{Direction, ResolvedNode, Stage};
use crate::verdict::{LogEvent, RuleRef};
use crate::walk_end::{NamedWalkEnd, WalkEnd};

pub trait PolicyWalker: std::fmt::Debug {
    /// Takes a new resolved node. Every walker takes every node: the compile cannot fail (a rule it cannot
    /// express is refused when the resources are loaded, not here).
    fn rebuild(&mut self, world: &ResolvedNode);
    /// Walks `ep`'s policies of `stage` for direction `d`; Log rules append to `logs`.
    fn walk(
        &self,
        world: &ResolvedNode,
        ep: EndpointRef,
        d: Direction,
        stage: Stage,
        pkt: &PacketHeader,
        logs: &mut Vec<LogEvent>,
    ) -> NamedWalkEnd;
    /// Whether any policy of `stage` selects `ep` (for direction `d`, or either when `None`).
    fn has_policies(&self, world: &ResolvedNode, ep: EndpointRef, stage: Stage, d: Option<Direction>) -> bool;
}

/// Walks interpreted directly from the resources: the reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreted;

impl PolicyWalker for Interpreted {
    fn rebuild(&mut self, _world: &ResolvedNode) {}

    fn walk(
        &self,
        world: &ResolvedNode,
        ep: EndpointRef,
        d: Direction,
        stage: Stage,
        pkt: &PacketHeader,
        logs: &mut Vec<LogEvent>,
    ) -> NamedWalkEnd {
        let input = WalkInput { world, endpoint: ep.endpoint(world), direction: d, stage, pkt };
        // The normal stage runs the profiles after the tiers; the others stop at the tiers.
        match walk_tiers(&input, logs) {
            WalkEnd::FellThrough if stage == Stage::Normal => walk_profiles(&input, logs),
            end => end,
        }
    }

    fn has_policies(&self, world: &ResolvedNode, ep: EndpointRef, stage: Stage, d: Option<Direction>) -> bool {
        let endpoint = ep.endpoint(world);
        match d {
            Some(d) => world.has_policies_for(endpoint, stage, d),
            None => world.has_policies(endpoint, stage),
        }
    }
}

/// Re-exported for walkers that build log events from rule references.
pub fn log_for(world: &ResolvedNode, rule: RuleRef) -> LogEvent {
    log_event(world, rule)
}
