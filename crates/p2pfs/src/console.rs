//! The interactive console shared by both shells.
//!
//! A dedicated thread reads lines (rustyline with history and line editing
//! on a terminal; plain line reading from a pipe) and hands each one to the
//! async side, waiting until the command has been handled before showing
//! the next prompt. Output that arrives while a prompt is open (events,
//! progress bars) goes through rustyline's external printer so it never
//! breaks the line being typed. Live progress bars sit just above the
//! prompt and are redrawn in place.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// One thing the user did.
pub(crate) enum Input {
    /// A line, with a channel to say "handled, show the next prompt".
    Line(String, std::sync::mpsc::SyncSender<()>),
    /// End of input (Ctrl-D, or the pipe closed).
    Eof,
    /// Ctrl-C at the prompt.
    Interrupted,
}

type Printer = Box<dyn ExternalPrinter + Send>;

/// Where output goes.
#[derive(Clone)]
pub(crate) struct Console {
    inner: Arc<ConsoleInner>,
}

struct ConsoleInner {
    interactive: bool,
    reading: AtomicBool,
    printer: Mutex<Option<Printer>>,
    /// Progress lines currently drawn right above the prompt.
    bar_lines: Mutex<usize>,
}

impl Console {
    /// Starts the input thread with the given prompt.
    pub(crate) fn start(
        prompt: String,
        history: Option<std::path::PathBuf>,
    ) -> (Console, mpsc::Receiver<Input>) {
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let console = Console {
            inner: Arc::new(ConsoleInner {
                interactive,
                reading: AtomicBool::new(false),
                printer: Mutex::new(None),
                bar_lines: Mutex::new(0),
            }),
        };
        let (tx, rx) = mpsc::channel(1);
        let c = console.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if interactive {
                    c.editor_loop(&prompt, history, &tx);
                } else {
                    pipe_loop(&tx);
                }
            })
            .ok();
        (console, rx)
    }

    /// True on a terminal (prompts, bars); false for pipes.
    pub(crate) fn interactive(&self) -> bool {
        self.inner.interactive
    }

    fn editor_loop(
        &self,
        prompt: &str,
        history: Option<std::path::PathBuf>,
        tx: &mpsc::Sender<Input>,
    ) {
        let Ok(mut editor) = DefaultEditor::new() else {
            pipe_loop(tx);
            return;
        };
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        if let Ok(p) = editor.create_external_printer() {
            *self.inner.printer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(p));
        }
        loop {
            self.inner.reading.store(true, Ordering::SeqCst);
            let line = editor.readline(prompt);
            self.inner.reading.store(false, Ordering::SeqCst);
            // The prompt line now sits between any bars and new output.
            *self
                .inner
                .bar_lines
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = 0;
            match line {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        if let Some(h) = &history {
                            let _ = editor.save_history(h);
                        }
                    }
                    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
                    if tx.blocking_send(Input::Line(line, ack_tx)).is_err() {
                        return;
                    }
                    let _ = ack_rx.recv();
                }
                Err(ReadlineError::Interrupted) => {
                    if tx.blocking_send(Input::Interrupted).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
            }
        }
    }

    /// Prints a block of text: at once when no prompt is open, above the
    /// prompt (and above live bars) when one is.
    pub(crate) fn print(&self, text: &str) {
        if self.inner.interactive && self.inner.reading.load(Ordering::SeqCst) {
            let mut bars = self
                .inner
                .bar_lines
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let erase = erase_lines(*bars);
            *bars = 0;
            self.external(format!("{erase}{text}"));
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    /// Draws live progress lines right above the open prompt, replacing the
    /// previous ones. Does nothing off a terminal or while no prompt is open.
    pub(crate) fn draw_bars(&self, lines: &[String]) {
        if !self.inner.interactive || !self.inner.reading.load(Ordering::SeqCst) {
            return;
        }
        let mut bars = self
            .inner
            .bar_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() && *bars == 0 {
            return;
        }
        let erase = erase_lines(*bars);
        let width = terminal_width();
        let body: Vec<String> = lines
            .iter()
            .map(|l| l.chars().take(width.saturating_sub(1)).collect())
            .collect();
        *bars = body.len();
        if body.is_empty() {
            // rustyline adds a newline after the message; take it back.
            self.external(format!("{erase}\x1b[1A"));
        } else {
            self.external(format!("{erase}{}", body.join("\n")));
        }
    }

    fn external(&self, msg: String) {
        let mut printer = self.inner.printer.lock().unwrap_or_else(|e| e.into_inner());
        match printer.as_mut() {
            Some(p) => {
                let _ = p.print(msg);
            }
            None => outln!("{msg}"),
        }
    }
}

/// Escape codes that move up over `n` lines drawn above the prompt and
/// erase them (rustyline has already cleared the prompt row itself).
fn erase_lines(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("\x1b[{n}A\r\x1b[J")
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn pipe_loop(tx: &mpsc::Sender<Input>) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        if tx.blocking_send(Input::Line(line, ack_tx)).is_err() {
            return;
        }
        let _ = ack_rx.recv();
    }
    let _ = tx.blocking_send(Input::Eof);
}

/// Splits a command line into words, honouring quotes.
pub(crate) fn split_words(line: &str) -> Result<Vec<String>, String> {
    shell_words::split(line).map_err(|_| "unbalanced quotes".to_string())
}
