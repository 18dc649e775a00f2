//! `--input` of `call` and `run`: JSON given inline, `@FILE` holding JSON, or `-` for stdin.
//!
//! The wire's integers are signed 64-bit: an integer literal outside that range is refused
//! with its place in the text, never turned into a float or wrapped (serde_json alone would
//! read `18446744073709551616` as a float without a word).

use std::io::Read;

/// Most bytes of input read from a file or stdin (the wire's default frame is 16 MiB).
const MAX_INPUT: u64 = 64 << 20;

/// The task input named by `arg`.
pub fn read_input(arg: &str) -> Result<serde_json::Value, String> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("--input -: reading stdin: {e}"))?;
        text
    } else if let Some(file) = arg.strip_prefix('@') {
        let mut text = String::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_INPUT + 1).read_to_string(&mut text))
            .map_err(|e| format!("--input {arg}: {e}"))?;
        text
    } else {
        arg.to_string()
    };
    if text.len() as u64 > MAX_INPUT {
        return Err(format!("--input {arg}: more than {MAX_INPUT} bytes"));
    }
    check_integers(&text).map_err(|e| format!("--input: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("--input is not valid JSON: {e}"))
}

/// Refuses an integer literal (no fraction, no exponent) outside `i64`.
fn check_integers(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string, mut line, mut col) = (0, false, 1, 1);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => {
                    i += 1;
                    col += 1;
                }
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            let mut end = i + 1;
            while end < bytes.len()
                && matches!(bytes[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            {
                end += 1;
            }
            let token = &text[start..end];
            let integer = !token.contains(['.', 'e', 'E']);
            if integer && token != "-" && token.parse::<i64>().is_err() {
                return Err(format!(
                    "the integer {token} at line {line} column {col} is outside the wire's \
                     64-bit signed range ({} to {}); write it as a string, or as a float \
                     (e.g. {token}.0) if that is what you mean",
                    i64::MIN,
                    i64::MAX
                ));
            }
            col += end - start;
            i = end;
            continue;
        }
        if b == b'\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_outside_i64_are_refused_with_their_place() {
        let e = read_input("{\"a\": [1,\n 18446744073709551616]}").unwrap_err();
        assert!(
            e.starts_with(
                "--input: the integer 18446744073709551616 at line 2 column 2 is outside"
            ),
            "{e}"
        );
        assert!(read_input("-9223372036854775809").is_err());
        assert!(read_input("9223372036854775808").is_err());
    }

    #[test]
    fn what_fits_is_read_as_is() {
        let v = read_input("[9223372036854775807, -9223372036854775808, 1.5e300, \"18446744073709551616\", \"\\\"9\"]")
            .expect("fits");
        assert_eq!(v[0], serde_json::json!(i64::MAX));
        assert_eq!(v[1], serde_json::json!(i64::MIN));
        assert_eq!(v[3], "18446744073709551616");
    }

    #[test]
    fn input_comes_from_a_file_and_bad_json_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("in.json");
        std::fs::write(&f, "{\"x\": 2}").expect("write");
        let v = read_input(&format!("@{}", f.display())).expect("file");
        assert_eq!(v["x"], 2);
        let e = read_input(&format!("@{}", dir.path().join("none").display())).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        assert!(read_input("{")
            .unwrap_err()
            .starts_with("--input is not valid JSON"));
    }
}
