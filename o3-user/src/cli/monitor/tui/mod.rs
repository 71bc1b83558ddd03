//! `o3 monitor --tui`: the full-screen live view. A sampling thread ([`snapshot`]) sends a
//! snapshot per refresh over a channel; this loop draws the latest one ([`view`], pure) and
//! quits on `q`, Esc, Ctrl-C, SIGTERM, SIGINT or SIGHUP, restoring the terminal on the way out
//! (on a panic too).

pub mod snapshot;
pub mod view;

use std::io::{IsTerminal as _, Stdout};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use thiserror::Error;

use snapshot::{Collector, Snapshot};

#[derive(Debug, Error)]
pub enum TuiError {
    #[error("o3 monitor --tui needs a terminal on stdout (drop --tui for one line per refresh, or add --json)")]
    NotATerminal,
    #[error("setting up the terminal: {0} (drop --tui for one line per refresh)")]
    Terminal(std::io::Error),
    #[error("starting the sampling thread: {0}")]
    Thread(std::io::Error),
    #[error("the sampling thread ended unexpectedly (its message is above)")]
    SamplerEnded,
}

/// Refuses early, before any source is opened, when stdout is not a terminal.
pub fn check_terminal() -> Result<(), TuiError> {
    if std::io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(TuiError::NotATerminal)
    }
}

/// Puts the terminal back: main screen, cursor shown, cooked mode.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        // A panic restores the terminal before its message is printed.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        enable_raw_mode()?;
        let mut out = std::io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e);
        }
        let terminal = Terminal::new(CrosstermBackend::new(out)).inspect_err(|_| restore())?;
        Ok(Screen { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// True for the keys that quit: q, Esc, Ctrl-C.
fn quits(e: &Event) -> bool {
    let Event::Key(k) = e else {
        return false;
    };
    k.kind == KeyEventKind::Press
        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
}

/// Runs the view until a quit key or a signal (`sig`: the signal pipe's read end).
pub fn run(collector: Collector, sig: RawFd) -> Result<(), TuiError> {
    let (tx, rx) = channel::<Snapshot>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut screen = Screen::enter().map_err(TuiError::Terminal)?;
    let sampler = snapshot::spawn(collector, tx, stop.clone()).map_err(TuiError::Thread)?;
    let mut latest: Option<Snapshot> = None;
    let mut dirty = true;
    let result = loop {
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(s) => {
                    latest = Some(s);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            // The thread sends until told to stop: it ended by a panic.
            break Err(TuiError::SamplerEnded);
        }
        if dirty {
            let drawn = screen.terminal.draw(|f| match &latest {
                Some(s) => view::draw(f, s),
                None => f.render_widget("o3 monitor: reading the first sample…", f.area()),
            });
            if let Err(e) = drawn {
                break Err(TuiError::Terminal(e));
            }
            dirty = false;
        }
        match event::poll(Duration::from_millis(50)) {
            Ok(true) => match event::read() {
                Ok(e) if quits(&e) => break Ok(()),
                Ok(Event::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(e) => break Err(TuiError::Terminal(e)),
            },
            Ok(false) => {}
            Err(e) => break Err(TuiError::Terminal(e)),
        }
        // A signal number waiting in the non-blocking signal pipe ends the view.
        if nix::unistd::read(sig, &mut [0u8; 1]) == Ok(1) {
            break Ok(());
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = sampler.join();
    drop(screen);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    #[test]
    fn q_esc_and_ctrl_c_quit_other_keys_do_not() {
        let key = |code, m| Event::Key(KeyEvent::new(code, m));
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
