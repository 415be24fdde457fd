//! What a frame costs against a queue's byte bound: its payload and
//! strings plus a fixed overhead, so a flood of empty frames is bounded too.

use cohort_proto::frame::Encoded;
use cohort_proto::pb::{self, master_frame::Kind};

/// What one frame costs against the byte bound.
pub(super) fn cost(frame: &pb::MasterFrame) -> usize {
    match &frame.kind {
        Some(Kind::MemberEvent(e)) => 64 + e.reason.len() + e.member.as_ref().map_or(0, info_cost),
        Some(Kind::Welcome(w)) => 64 + w.members.iter().map(info_cost).sum::<usize>(),
        Some(Kind::SendResult(r)) => 64 + r.id.len() + r.message.len(),
        _ => 64,
    }
}

fn info_cost(m: &pb::MemberInfo) -> usize {
    let labels: usize = m.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    128 + m.name.len() + m.instance_id.len() + m.host.len() + m.version.len() + labels
}

/// What one delivery costs: its encoded envelope and the fixed overhead.
pub(super) fn envelope_cost(e: &Encoded) -> usize {
    64 + e.len()
}
