//! The `cohort.v1` wire contract: messages and gRPC services generated from
//! `proto/cohort/v1/cohort.proto`, plus the encoded descriptor set that the
//! master serves for reflection. Nothing here is hand-written but re-exports,
//! small conversions and the master's pre-encoded frame ([`frame`]).

pub mod auth;
pub mod codec;
mod domain;
pub mod env;
pub mod frame;
pub mod log_line;
pub mod time;

pub use domain::{
    DEFAULT_APP, MAX_APP_LEN, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_NAME_LEN,
    MemberName, Role, Target, check_app, check_labels, is_instance_id,
};

/// Generated code for package `cohort.v1`.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("cohort.v1");
}

/// Generated servers of package `cohort.v1`: the master's side.
#[allow(missing_docs)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/cohort.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every file of the contract (including
/// the well-known types it imports), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cohort_descriptor.bin"));

/// Largest encoded message either side accepts, in bytes (SPEC §7).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
