//! `cohortctl`: operate a Cohort cluster like PM2, across hosts. It reaches
//! the master the way members do (`COHORT_MASTER`, `COHORT_TOKEN` or
//! `COHORT_TOKEN_FILE`, `COHORT_TLS_*`) and speaks the Control API.
//!
//! Exit codes a script can use: 0 done; 1 the master refused or failed
//! (its message is printed); 2 bad usage; 69 the master cannot be reached;
//! 77 not authenticated or not allowed.

mod client;
mod logs;
mod show;
mod top;

use clap::{CommandFactory, Parser, Subcommand};
use client::Ctl;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "cohortctl",
    version,
    about = "Operate a Cohort cluster: list, inspect, message, scale, restart, drain, stop.",
    after_help = "The master is COHORT_MASTER (or --master); the token COHORT_TOKEN or the \
first line of COHORT_TOKEN_FILE; TLS COHORT_TLS_CA / COHORT_TLS_CERT / COHORT_TLS_KEY.\n\
Targets: all, agents, workers, random:ROLE, or a member (name, instance id, pid@host).\n\
Exit codes: 0 done, 1 refused by the master, 2 bad usage, 69 master unreachable, 77 not authenticated."
)]
struct Cli {
    /// The master (`http://HOST:7420`, `https://…`), or several that fail over, comma-separated (it finds the leader) [env: COHORT_MASTER; default: http://127.0.0.1:7420].
    #[arg(long, global = true, value_name = "URL")]
    master: Option<String>,
    /// Print JSON instead of tables (read commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every member: name, role, state, pid@host, restarts, uptime, CPU, memory.
    #[command(visible_alias = "ps")]
    Ls {
        /// Redraw every second until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// A live full-screen view: members, CPU and memory sparklines, events;
    /// keys to restart or drain the selected member.
    Top,
    /// The cluster: version, uptime, counts by state, listeners.
    Info,
    /// Whether the master serves, and whether the cluster is ready (exit 1 if not serving).
    Health,
    /// The cluster's events: the current state, then (with -f) what follows.
    Events {
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
    },
    /// Members' recent log lines, then (with -f) new ones as they come:
    /// local children's and remote members' alike.
    Logs {
        /// all (default), agent, worker, app:APP, or a member name.
        which: Option<String>,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Only lines from this long ago on (`10m`, `1h`).
        #[arg(long, value_parser = cohort_process::parse_duration)]
        since: Option<Duration>,
        /// Kept lines per member to print first (0: every kept line).
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
    },
    /// Sends a message; prints how many members it reached.
    Send {
        /// all, agents, workers, random:ROLE, or a member.
        target: String,
        /// What the message is about.
        action: String,
        /// Its data (UTF-8 text; JSON is passed as its text).
        data: Option<String>,
    },
    /// Sends a request to one member and prints its reply.
    Request {
        /// A member or random:ROLE.
        target: String,
        /// What the request is about.
        action: String,
        /// Its data.
        data: Option<String>,
        /// How long to wait for the reply.
        #[arg(long, default_value = "5s", value_parser = cohort_process::parse_duration)]
        timeout: Duration,
    },
    /// Sets how many local members of an app (or of agent / worker) the
    /// master runs.
    Scale {
        /// An app (web or app:web), or agent / worker.
        app: String,
        /// How many.
        count: u32,
    },
    /// Has the master read its config file again and apply it app by app
    /// (as SIGHUP does): changed apps roll, others are not touched.
    Reload,
    /// Restarts a local member, or every local member of a role, without a gap.
    Restart {
        /// A member name, agent / worker for the whole role, or app:APP
        /// (local and remote members; a remote one is drained and waited
        /// for until its own supervisor has it READY again).
        which: String,
        /// One at a time, each replacement ready before the next starts.
        #[arg(long)]
        rolling: bool,
    },
    /// Asks a member (or every member of an app) to finish its work and leave.
    Drain {
        /// The member, or app:APP.
        member: String,
    },
    /// Stops the master and its local members.
    Shutdown,
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "cohortctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohortctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let (code, text) = client::explain(&e);
            eprintln!("cohortctl: {text}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let mut ctl = Ctl::connect(cli.master.as_deref()).await?;
    match cli.command {
        Command::Ls { watch } => loop {
            let members = ctl.members().await?;
            let text = if json {
                show::members_json(&members)
            } else {
                show::table(&members, show::colour())
            };
            if !watch {
                println!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            // Clear the screen and redraw in place.
            println!("\x1b[2J\x1b[H{text}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
        Command::Top => top::run(ctl).await?,
        Command::Info => {
            let info = ctl.info().await?;
            println!("{}", show::info(&info, json));
        }
        Command::Health => {
            let (serving, ready) = ctl.health().await?;
            let info = ctl.info().await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "serving": serving,
                        "cluster_ready": ready,
                        "master_role": info.master_role,
                        "leader": info.leader,
                        "term": info.term,
                    })
                );
            } else {
                let role = match info.master_role.as_str() {
                    "" => String::new(),
                    role => format!(" ({role}, term {}, leader {})", info.term, info.leader),
                };
                println!(
                    "{}; cluster {}{role}",
                    if serving { "SERVING" } else { "NOT_SERVING" },
                    if ready { "ready" } else { "not ready yet" }
                );
            }
            if !serving {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Events { follow } => {
            loop {
                let ended = ctl.events(follow, json).await;
                // With several masters a followed stream outlives a failover.
                if !(follow && ctl.several) {
                    ended?;
                    break;
                }
                let why = ended.err().map_or("end of stream".into(), |e| reason(&e));
                ctl = Ctl::resume(cli.master.as_deref(), &why).await?;
            }
        }
        Command::Logs {
            which,
            follow,
            since,
            lines,
        } => {
            let colour = show::colour();
            let mut req = logs::request(which.as_deref(), since, lines, follow);
            loop {
                let ended: anyhow::Result<bool> = async {
                    let mut stream = ctl.logs(req.clone()).await?;
                    let mut out = std::io::stdout().lock();
                    while let Some(entry) = stream.message().await? {
                        // A closed pipe (`| head`) ends us quietly.
                        if writeln!(out, "{}", logs::line(&entry, colour, json)).is_err() {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                .await;
                if matches!(ended, Ok(true)) || !(follow && ctl.several) {
                    ended?;
                    break;
                }
                let why = ended.err().map_or("end of stream".into(), |e| reason(&e));
                ctl = Ctl::resume(cli.master.as_deref(), &why).await?;
                // The new leader holds only lines sent to it: all new here.
                req.since = None;
            }
        }
        Command::Send {
            target,
            action,
            data,
        } => {
            let target = target.parse().map_err(anyhow::Error::msg)?;
            let sent = ctl.send(target, action, data, None).await?;
            println!("delivered to {}", sent.delivered);
        }
        Command::Request {
            target,
            action,
            data,
            timeout,
        } => {
            let target = target.parse().map_err(anyhow::Error::msg)?;
            let sent = ctl.send(target, action, data, Some(timeout)).await?;
            let reply = sent.reply.map(|r| r.data).unwrap_or_default();
            println!("{}", String::from_utf8_lossy(&reply));
        }
        Command::Scale { app, count } => {
            let app = app.strip_prefix("app:").unwrap_or(&app);
            ctl.scale(app, count).await?;
            println!("{app}: {count}");
        }
        Command::Reload => {
            let apps = ctl.reload().await?;
            show::reload(&apps, &mut std::io::stdout())?;
        }
        Command::Restart { which, rolling } => {
            ctl.restart(&which, rolling).await?;
            println!("{which}: restarted");
        }
        Command::Drain { member } => {
            ctl.drain(member.clone()).await?;
            println!("{member}: draining");
        }
        Command::Shutdown => {
            ctl.shutdown().await?;
            println!("the master is shutting down");
        }
        Command::Completions { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a stream ended, in a few words (a status's message, not its chain).
fn reason(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => s.message().to_string(),
        None => e.to_string(),
    }
}
