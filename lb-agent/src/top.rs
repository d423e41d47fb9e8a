//! `lb-agent top`: the busiest services by packets, new flows or drops,
//! refreshed every second on the terminal's alternate screen (p, n, d
//! re-rank; q quits), or one sample with `--once` (JSON with `--json`) for
//! scripts. Rates come from two readings of the per-CPU stats maps
//! ([`lb_agent::ops::top`]); the arguments live in cli.rs.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute, queue, terminal,
};
use lb_agent::{
    dataplane::Dataplane,
    ops::{
        names,
        top::{rates, sort_services, table, Rates, Sample, SortBy},
    },
};

use crate::cli::{SortArg, TopArgs};

impl From<SortArg> for SortBy {
    fn from(s: SortArg) -> Self {
        match s {
            SortArg::Packets => SortBy::Packets,
            SortArg::NewFlows => SortBy::NewFlows,
            SortArg::Drops => SortBy::Drops,
        }
    }
}

fn open(a: &TopArgs) -> Result<Dataplane> {
    Dataplane::open(&a.pin_path).with_context(|| {
        format!("no xdplb maps pinned under {} (pass --pin-path as given to `lb-agent run`)", a.pin_path.display())
    })
}

pub fn run(a: TopArgs) -> Result<()> {
    let dp = open(&a)?;
    let interval = Duration::from_secs_f64(a.interval);
    if a.once {
        let first = Sample::read(&dp)?;
        std::thread::sleep(interval);
        let r = rates(&first, &Sample::read(&dp)?, &names::read(&a.pin_path), a.sort.into());
        let text = if a.json { serde_json::to_string_pretty(&r)? + "\n" } else { table(&r, a.limit) };
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("the live view needs a terminal; use `lb-agent top --once [--json]` in scripts");
    }
    terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
    let mut out = std::io::stdout();
    execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
    let result = live(&dp, &a, interval);
    // Restore the terminal whatever happened.
    let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    result
}

/// Redraws every `interval` until q, Esc or Ctrl-C; p, n and d re-rank by
/// packets, new flows and drops at once.
fn live(dp: &Dataplane, a: &TopArgs, interval: Duration) -> Result<()> {
    let mut out = std::io::stdout();
    let mut sort: SortBy = a.sort.into();
    let mut prev = Sample::read(dp)?;
    let mut next = Instant::now() + interval;
    let mut last: Option<Rates> = None;
    loop {
        let screen = match &last {
            Some(r) => {
                let rows = terminal::size().map_or(a.limit, |(_, h)| (h as usize).saturating_sub(8 + r.drops.len()));
                let header = format!(
                    "lb-agent top — {}   every {:.1} s, by {}   (p/n/d sort, q quits)\n\n",
                    a.pin_path.display(),
                    a.interval,
                    sort_name(sort)
                );
                header + &table(r, a.limit.min(rows.max(1)))
            }
            None => format!("lb-agent top — {}   (q quits)\n\nreading…", a.pin_path.display()),
        };
        queue!(out, cursor::MoveTo(0, 0), terminal::Clear(terminal::ClearType::All))?;
        // Raw mode: lines need a carriage return too.
        out.write_all(screen.replace('\n', "\r\n").as_bytes())?;
        out.flush()?;
        // Keys until the next reading.
        let mut resorted = false;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                continue;
            }
            let Event::Key(k) = event::read()? else { continue };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            match k.code {
                _ if ctrl_c => return Ok(()),
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('p') => sort = SortBy::Packets,
                KeyCode::Char('n') => sort = SortBy::NewFlows,
                KeyCode::Char('d') => sort = SortBy::Drops,
                _ => continue,
            }
            if let Some(r) = &mut last {
                sort_services(&mut r.services, sort);
            }
            resorted = true;
            break;
        }
        if resorted {
            continue;
        }
        // After a stall, the next reading is one interval from now, not a burst.
        next = (next + interval).max(Instant::now());
        let cur = Sample::read(dp)?;
        last = Some(rates(&prev, &cur, &names::read(&a.pin_path), sort));
        prev = cur;
    }
}

fn sort_name(s: SortBy) -> &'static str {
    match s {
        SortBy::Packets => "packets",
        SortBy::NewFlows => "new flows",
        SortBy::Drops => "drops",
    }
}
