//! Splitting a SQL script into statements, for the scripts that must run one statement at a time (outside a transaction, e.g. `CREATE INDEX CONCURRENTLY`).
//!
//! PostgreSQL runs a multi-statement query string as one implicit transaction, so a
//! no-transaction migration has to be sent statement by statement. The splitter knows
//! PostgreSQL's lexical rules that can hide a `;`: quoted strings (with `''` and, in
//! `E'...'`, backslash escapes), quoted identifiers, dollar-quoted bodies, `--` comments
//! and nested `/* */` comments.

/// The statements of `sql`, trimmed, without empty ones or ones that are only comments.
pub fn statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < bytes.len() && depth > 0 {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' => {
                let escapes = i > 0 && matches!(bytes[i - 1], b'E' | b'e') && (i < 2 || !is_ident(bytes[i - 2]));
                has_code = true;
                i = skip_quoted(bytes, i + 1, b'\'', escapes);
                continue;
            }
            b'"' => {
                has_code = true;
                i = skip_quoted(bytes, i + 1, b'"', false);
                continue;
            }
            b'$' if i == 0 || !is_ident(bytes[i - 1]) => {
                if let Some(tag_end) = dollar_tag_end(bytes, i) {
                    let tag = &sql[i..=tag_end];
                    has_code = true;
                    i = sql[tag_end + 1..].find(tag).map_or(bytes.len(), |n| tag_end + 1 + n + tag.len());
                    continue;
                }
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
                i += 1;
                continue;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        out.push(sql[start..].trim().to_string());
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Index just after the closing quote (a doubled quote is an escaped one).
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < bytes.len() {
        if backslash && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// `$tag$` or `$$` starting at `i`: the index of the closing `$` of the tag.
fn dollar_tag_end(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < bytes.len() && (is_ident(bytes[j])) {
        if j == i + 1 && bytes[j].is_ascii_digit() {
            return None; // $1 is a parameter, not a tag
        }
        j += 1;
    }
    (j < bytes.len() && bytes[j] == b'$').then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_bodies() {
        let sql = r#"
-- leading comment; not a statement
CREATE INDEX CONCURRENTLY a ON t (x);
INSERT INTO t VALUES ('a;b', 'it''s; fine', E'back\'slash;');
SELECT "weird;name" FROM t; /* block; /* nested; */ still */
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
DO $$ BEGIN PERFORM 1; END $$;
SELECT $1::int
"#;
        let s = statements(sql);
        assert_eq!(s.len(), 6, "{s:#?}");
        assert_eq!(s[0], "-- leading comment; not a statement\nCREATE INDEX CONCURRENTLY a ON t (x)");
        assert!(s[1].ends_with("E'back\\'slash;')"), "{}", s[1]);
        assert_eq!(s[2], "SELECT \"weird;name\" FROM t");
        assert!(s[3].starts_with("/* block; /* nested; */ still */\nCREATE FUNCTION"), "{}", s[3]);
        assert!(s[3].ends_with("LANGUAGE sql"));
        assert_eq!(s[4], "DO $$ BEGIN PERFORM 1; END $$");
        assert_eq!(s[5], "SELECT $1::int");
    }

    #[test]
    fn comment_only_and_empty_scripts_have_no_statements() {
        assert!(statements("-- nothing\n/* here */\n;\n").is_empty());
        assert!(statements("").is_empty());
    }
}
