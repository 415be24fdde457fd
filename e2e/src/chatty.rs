//! A master config whose one worker floods its output: for the tests and
//! the bench of log capture.

use std::path::Path;

/// The line a [`chatty_config`] worker's payload prints without pause.
pub const CHATTY_LINE: &str = "a chatty child line";

/// A master config with one local worker, `worker` (a `cohort-worker`
/// binary), whose `--exec` payload reports ready, waits for any message,
/// and then prints [`CHATTY_LINE`] as fast as it can; no agent.
pub fn chatty_config(worker: &Path) -> String {
    let payload = format!(
        r#"fd=$COHORT_CHANNEL_FD; echo '{{"type":"ready"}}' >&"$fd"; read -r _ <&"$fd"; exec yes '{CHATTY_LINE}'"#
    );
    format!(
        "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [{:?}, \"--exec\", \"--\", \"sh\", \"-c\", {payload:?}]\n",
        worker.display().to_string()
    )
}
