//! The small CSV dialect SNDS writes: comma-separated, fields optionally in
//! double quotes with `""` for a quote, one record per line. A bad line is an
//! error of that line only, so one broken row never hides the rows after it.

/// The fields of each non-blank line, with its 1-based line number.
pub(crate) fn records(
    text: &str,
) -> impl Iterator<Item = (usize, Result<Vec<String>, RecordError>)> + '_ {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, split_record(line.strip_suffix('\r').unwrap_or(line))))
}

/// A line that is not a CSV record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("control character U+{:04X} in the line (binary data?)", u32::from(*.0))]
    ControlCharacter(char),
    #[error("a quoted field is not closed")]
    UnclosedQuote,
    #[error("`{0}` after a closing quote; expected a comma")]
    AfterClosingQuote(char),
    #[error("a quote inside an unquoted field")]
    QuoteInUnquotedField,
}

fn split_record(line: &str) -> Result<Vec<String>, RecordError> {
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(RecordError::ControlCharacter(c));
    }
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(RecordError::UnclosedQuote),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(RecordError::AfterClosingQuote(c)),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(RecordError::QuoteInUnquotedField),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Vec<String> {
        split_record(line).unwrap()
    }

    #[test]
    fn quoted_and_plain_fields() {
        assert_eq!(
            fields(
                r#"1.2.3.0,1.2.3.255,Yes,"Blocked due to ""user"" complaints, or other evidence""#
            ),
            vec![
                "1.2.3.0",
                "1.2.3.255",
                "Yes",
                r#"Blocked due to "user" complaints, or other evidence"#
            ]
        );
        assert_eq!(fields("a, b ,,c"), vec!["a", "b", "", "c"]);
        assert_eq!(fields("a,"), vec!["a", ""]);
    }

    #[test]
    fn broken_lines_are_errors_of_that_line() {
        assert!(split_record(r#"1.2.3.4,"open"#)
            .unwrap_err()
            .to_string()
            .contains("not closed"));
        assert!(split_record(r#""a"b,c"#)
            .unwrap_err()
            .to_string()
            .contains("after a closing quote"));
        assert!(split_record(r#"a"b,c"#)
            .unwrap_err()
            .to_string()
            .contains("unquoted"));
        assert!(split_record("a\u{0}b")
            .unwrap_err()
            .to_string()
            .contains("U+0000"));
        let all: Vec<_> = records("\u{feff}a,b\r\n\n\"x\ny,z\n").collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (1, Ok(vec!["a".to_string(), "b".to_string()])));
        assert!(all[1].1.is_err());
        assert_eq!(all[2], (4, Ok(vec!["y".to_string(), "z".to_string()])));
    }
}
