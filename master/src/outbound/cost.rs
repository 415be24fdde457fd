//! What a frame costs against a queue's byte bound: its payload and
//! strings plus a fixed overhead, so a flood of empty frames is bounded too;
//! and the room frames give back as they leave.

use super::Lane;
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

/// The room of frames leaving the queue, summed per lane.
#[derive(Debug, Default)]
pub(super) struct Freed {
    pub(super) data: usize,
    pub(super) data_bytes: usize,
    pub(super) control: usize,
    pub(super) control_bytes: usize,
}

impl Freed {
    pub(super) fn of(lanes: impl IntoIterator<Item = Lane>) -> Self {
        let mut freed = Self::default();
        for lane in lanes {
            freed.add(lane);
        }
        freed
    }

    pub(super) fn add(&mut self, lane: Lane) {
        match lane {
            Lane::Data(cost) => {
                self.data += 1;
                self.data_bytes += cost;
            }
            Lane::Control(cost) => {
                self.control += 1;
                self.control_bytes += cost;
            }
        }
    }

    pub(super) fn frames(&self) -> usize {
        self.data + self.control
    }
}
