//! `value_echo`: reads frames whose payloads are bare `Value`s on stdin, decodes each with the
//! protocol's limits (`corral_proto`), and writes it back encoded again as a frame on stdout.
//! Tests drive it to hold codecs in other languages to the Rust one. A frame that does not
//! decode ends it with status 1 and the reason on stderr.

use corral_proto::frame::{self, FrameReader};
use corral_proto::Value;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut reader = FrameReader::new(std::io::stdin().lock());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        match reader.read_frame::<Value>() {
            Ok(Some(v)) => {
                let written = frame::encode(&v)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| out.write_all(&bytes).map_err(|e| e.to_string()));
                if let Err(e) = written {
                    eprintln!("value_echo: {e}");
                    return ExitCode::from(1);
                }
            }
            Ok(None) => {
                return if out.flush().is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("value_echo: {e}");
                return ExitCode::from(1);
            }
        }
        // Answer each frame before waiting for the next (the peer may wait for it).
        if out.flush().is_err() {
            return ExitCode::from(1);
        }
    }
}
