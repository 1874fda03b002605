//! Which field a JSON parse error is in. serde_json reports the line and column where it failed;
//! walking the text up to there gives the path (`arms[1].weight`), so config errors name the field
//! without wrapping every deserializer (`serde_path_to_error` cost a sixth of the wasm).

enum Frame {
    /// In an object; the key whose value is being read, if any.
    Object(Option<String>),
    /// In an array, at this element.
    Array(usize),
}

/// The path of the value being read at (1-based) `line` and `column` (a byte column, as serde_json
/// counts), or `"(root)"` at the top level.
pub fn path_at(text: &[u8], line: usize, column: usize) -> String {
    let end = offset(text, line, column).min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    // Whether the next string in the current object is a key.
    let mut expect_key = false;
    while i < end {
        match text[i] {
            b'{' => {
                stack.push(Frame::Object(None));
                expect_key = true;
            }
            b'[' => {
                stack.push(Frame::Array(0));
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object(key)) => {
                    *key = None;
                    expect_key = true;
                }
                Some(Frame::Array(n)) => *n += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i = start;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if expect_key {
                    if let Some(Frame::Object(key)) = stack.last_mut() {
                        let raw = text.get(start..i.min(text.len())).unwrap_or_default();
                        *key = Some(String::from_utf8_lossy(raw).into_owned());
                    }
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    render(&stack)
}

fn offset(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|&b| b == b'\n') {
            Some(n) => start += n + 1,
            None => return text.len(),
        }
    }
    start + column
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object(None) => break,
            Frame::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    if path.is_empty() {
        "(root)".to_owned()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_end_of(text: &str, marker: &str) -> String {
        let i = text.find(marker).unwrap() + marker.len();
        path_at(text.as_bytes(), 1, i)
    }

    #[test]
    fn paths_at_positions() {
        let t = r#"{"rollout":"d","arms":[{"name":"a","weight":1},{"name":"b","weight":"5"}],"sticky":{"source":"x"}}"#;
        assert_eq!(at_end_of(t, r#""weight":"5""#), "arms[1].weight");
        assert_eq!(at_end_of(t, r#""source":"x""#), "sticky.source");
        assert_eq!(at_end_of(t, r#""rollout":"d""#), "rollout");
        assert_eq!(at_end_of(t, r#""weight":1}"#), "arms[0]");
        assert_eq!(path_at(t.as_bytes(), 1, t.len()), "(root)");
        assert_eq!(path_at(b"", 1, 0), "(root)");
    }

    #[test]
    fn escapes_and_lines() {
        let t = "{\n \"a\\\"b\": {\n  \"c\": [1, 2, {\"d\": x";
        assert_eq!(path_at(t.as_bytes(), 3, 18), "a\\\"b.c[2].d");
        // Past the end of the text, or a line that does not exist: still a path, never a panic.
        assert_eq!(path_at(t.as_bytes(), 9, 99), "a\\\"b.c[2].d");
    }
}
