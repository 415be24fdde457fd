//! `cohortctl top`: the cluster on one screen, refreshed every second —
//! every member with its state, CPU and memory, sparklines of the selected
//! member's CPU and memory, and the event log. Keys: ↑/↓ select, r restart
//! the selected member (local ones), d drain it, q quit.

use crate::client::Ctl;
use cohort::pb;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Cell, List, Row, Sparkline, Table, TableState};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Samples kept per member for the sparklines.
const HISTORY: usize = 120;
/// Event lines kept.
const EVENTS: usize = 200;

/// What the screen shows.
#[derive(Default)]
pub struct Top {
    members: Vec<pb::MemberInfo>,
    cpu: HashMap<String, VecDeque<u64>>,
    memory: HashMap<String, VecDeque<u64>>,
    events: VecDeque<String>,
    selected: usize,
    status: String,
}

fn push(history: &mut VecDeque<u64>, value: u64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(value);
}

fn state_colour(state: &str) -> Color {
    match state {
        "ready" => Color::Green,
        "suspect" | "draining" => Color::Yellow,
        "backoff" | "failed" | "gone" => Color::Red,
        _ => Color::Cyan,
    }
}

impl Top {
    /// Takes a fresh listing: one CPU (‰ of a core) and memory (MiB) sample
    /// per member.
    pub fn update(&mut self, members: Vec<pb::MemberInfo>) {
        for m in &members {
            push(
                self.cpu.entry(m.name.clone()).or_default(),
                (m.cpu_percent * 10.0) as u64,
            );
            push(
                self.memory.entry(m.name.clone()).or_default(),
                m.rss_bytes >> 20,
            );
        }
        self.cpu.retain(|n, _| members.iter().any(|m| &m.name == n));
        self.memory
            .retain(|n, _| members.iter().any(|m| &m.name == n));
        self.members = members;
        self.selected = self.selected.min(self.members.len().saturating_sub(1));
    }

    /// Adds a line to the event log.
    pub fn event(&mut self, line: String) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(line);
    }

    fn selected_name(&self) -> Option<String> {
        self.members.get(self.selected).map(|m| m.name.clone())
    }

    /// Draws the whole screen.
    pub fn draw(&self, f: &mut Frame) {
        let [table_area, sparks, events_area, status] = Layout::vertical([
            Constraint::Min(6),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let now = crate::show::now_ms();
        let rows = self.members.iter().map(|m| {
            let state = crate::show::state(m.state);
            Row::new(vec![
                Cell::from(m.name.clone()),
                Cell::from(crate::show::role(m.role)),
                Cell::from(state.clone()).style(Style::new().fg(state_colour(&state))),
                Cell::from(format!("{}@{}", m.pid, m.host)),
                Cell::from(m.restarts.to_string()),
                Cell::from(crate::show::uptime(
                    cohort_proto::time::unix_ms(m.started_at.as_ref()),
                    now,
                )),
                Cell::from(format!("{:.1}%", m.cpu_percent)),
                Cell::from(crate::show::bytes(m.rss_bytes)),
                Cell::from(m.dropped_messages.to_string()),
            ])
        });
        let widths = [
            Constraint::Min(12),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(8),
        ];
        let header = Row::new([
            "NAME", "ROLE", "STATE", "PID@HOST", "RESTARTS", "UPTIME", "CPU", "MEM", "DROPPED",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(format!(" cohort: {} members ", self.members.len())))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(Some(self.selected));
        f.render_stateful_widget(table, table_area, &mut state);

        let [cpu_area, mem_area] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(sparks);
        let name = self.selected_name().unwrap_or_default();
        let series = |h: &HashMap<String, VecDeque<u64>>| -> Vec<u64> {
            h.get(&name)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default()
        };
        let cpu = series(&self.cpu);
        let memory = series(&self.memory);
        let last = |v: &[u64]| v.last().copied().unwrap_or(0);
        f.render_widget(
            Sparkline::default()
                .block(
                    Block::bordered()
                        .title(format!(" {name} CPU {:.1}% ", last(&cpu) as f64 / 10.0)),
                )
                .data(&cpu)
                .style(Style::new().fg(Color::Green)),
            cpu_area,
        );
        f.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!(" {name} memory {} MiB ", last(&memory))))
                .data(&memory)
                .style(Style::new().fg(Color::Cyan)),
            mem_area,
        );
        let shown = events_area.height.saturating_sub(2) as usize;
        let lines: Vec<String> = self
            .events
            .iter()
            .rev()
            .take(shown)
            .rev()
            .cloned()
            .collect();
        f.render_widget(
            List::new(lines).block(Block::bordered().title(" events ")),
            events_area,
        );
        let help = "↑/↓ select · r restart · d drain · q quit";
        let text = match self.status.as_str() {
            "" => help.to_string(),
            s => format!("{s} · {help}"),
        };
        f.render_widget(ratatui::widgets::Paragraph::new(text), status);
    }
}

enum Input {
    Up,
    Down,
    Restart,
    Drain,
    Quit,
}

/// Runs the screen until `q`.
pub async fn run(mut ctl: Ctl) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel(16);
    // Terminal input is blocking: a thread of its own.
    std::thread::spawn(move || {
        loop {
            let Ok(Event::Key(k)) = event::read() else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let input = match k.code {
                KeyCode::Up | KeyCode::Char('k') => Input::Up,
                KeyCode::Down | KeyCode::Char('j') => Input::Down,
                KeyCode::Char('r') => Input::Restart,
                KeyCode::Char('d') => Input::Drain,
                KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
                _ => continue,
            };
            if keys_tx.blocking_send(input).is_err() {
                return;
            }
        }
    });
    let mut events = ctl.watch().await?;
    let mut top = Top::default();
    let mut terminal = ratatui::init();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = tick.tick() => match ctl.members().await {
                Ok(m) => top.update(m),
                Err(e) => top.status = format!("listing failed: {e}"),
            },
            ev = events.message() => match ev {
                Ok(Some(ev)) => top.event(crate::show::event(&ev, false)),
                Ok(None) => top.status = "the event stream ended".into(),
                Err(e) => top.status = format!("events: {}", e.message()),
            },
            key = keys.recv() => match key {
                Some(Input::Quit) | None => break Ok(()),
                Some(Input::Up) => top.selected = top.selected.saturating_sub(1),
                Some(Input::Down) => {
                    top.selected = (top.selected + 1).min(top.members.len().saturating_sub(1));
                }
                Some(Input::Restart) => if let Some(name) = top.selected_name() {
                    top.status = match ctl.restart(&name, false).await {
                        Ok(()) => format!("{name} restarted"),
                        Err(e) => format!("restart {name}: {}", crate::client::explain(&e).1),
                    };
                },
                Some(Input::Drain) => if let Some(name) = top.selected_name() {
                    top.status = match ctl.drain(name.clone()).await {
                        Ok(()) => format!("{name} draining"),
                        Err(e) => format!("drain {name}: {}", crate::client::explain(&e).1),
                    };
                },
            },
        }
        if let Err(e) = terminal.draw(|f| top.draw(f)) {
            break Err(e.into());
        }
    };
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    #[test]
    fn the_screen_shows_members_states_sparklines_and_events() {
        let member = |name: &str, state: pb::MemberState, cpu: f32, mib: u64| pb::MemberInfo {
            name: name.into(),
            role: pb::Role::Worker as i32,
            state: state as i32,
            pid: 7,
            host: "web1".into(),
            cpu_percent: cpu,
            rss_bytes: mib << 20,
            ..Default::default()
        };
        let mut top = Top::default();
        for i in 1..=20u64 {
            top.update(vec![
                member("worker-1", pb::MemberState::Ready, (i * 4) as f32, 10 + i),
                member("worker-2", pb::MemberState::Suspect, 1.0, 12),
            ]);
        }
        top.event("ready worker-1 (worker, ready)".into());
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).expect("terminal");
        terminal.draw(|f| top.draw(f)).expect("draw");
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "worker-1", "worker-2", "ready", "suspect", "7@web1", "30.0 MiB",
        ] {
            assert!(screen.contains(want), "{want} missing:\n{screen}");
        }
        assert!(screen.contains("worker-1 CPU 80.0%"), "{screen}");
        assert!(screen.contains("ready worker-1 (worker, ready)"));
        // The sparklines rise: block characters of several heights.
        let bars = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let heights = bars.iter().filter(|b| screen.contains(**b)).count();
        assert!(heights >= 3, "{screen}");
    }
}
