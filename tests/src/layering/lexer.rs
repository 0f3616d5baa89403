//! Just enough of a Rust lexer for the layering check: identifiers and punctuation with
//! their line numbers. Comments, string and character literals and lifetimes are dropped
//! (a `crate::` in a doc comment or a string is not an import), and so is every item
//! marked `#[cfg(test)]` (test code may import anything).

/// One token: an identifier (or keyword, or number) or a single punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Punct(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    /// 1-based.
    pub line: usize,
}

impl Token {
    pub fn is_ident(&self, name: &str) -> bool {
        matches!(&self.tok, Tok::Ident(i) if i == name)
    }

    pub fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }

    pub fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(i) => Some(i),
            Tok::Punct(_) => None,
        }
    }
}

/// The tokens of `source` that are not test code.
pub fn non_test_tokens(source: &str) -> Vec<Token> {
    strip_test_items(tokens(source))
}

/// Every token of `source`.
pub fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&chars, i, &mut line);
        } else if c == '"' {
            i = skip_string(&chars, i + 1, &mut line);
        } else if let Some(after) = raw_string_start(&chars, i) {
            i = skip_raw_string(&chars, after, &mut line);
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 2, &mut line);
        } else if c == 'b' && next == Some('\'') {
            i = skip_char_or_lifetime(&chars, i + 1);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&chars, i);
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(Token {
                tok: Tok::Ident(word),
                line,
            });
        } else {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Past the (nested) block comment starting at `i`.
fn skip_block_comment(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            ('\n', _) => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Past the closing quote of a string whose contents start at `i`.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Where the contents of a raw string (`r"`, `r#"`, `br##"` ...) starting at `i` begin,
/// with its number of `#`s; None if no raw string starts there.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    // An identifier that merely ends in r or br (`bar"` cannot occur, `var#` neither).
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some((j + hashes + 1, hashes))
}

fn skip_raw_string(chars: &[char], (mut i, hashes): (usize, usize), line: &mut usize) -> usize {
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        if chars[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    i
}

/// Past a character literal (`'a'`, `'\n'`, `'\u{1F600}'`) or the quote of a lifetime
/// (`'a`), starting at the quote `i`.
fn skip_char_or_lifetime(chars: &[char], i: usize) -> usize {
    match chars.get(i + 1) {
        Some('\\') => {
            // Past the backslash and the escaped character, to the closing quote.
            let mut j = i + 3;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            j + 1
        }
        Some(_) if chars.get(i + 2) == Some(&'\'') => i + 3,
        // A lifetime or label: its name is lexed as an identifier, harmlessly.
        _ => i + 1,
    }
}

/// Drops the items marked `#[cfg(test)]`, and everything when the file opens with
/// `#![cfg(test)]`.
fn strip_test_items(toks: Vec<Token>) -> Vec<Token> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if let Some(after) = cfg_test_attribute(&toks, i) {
            if toks[i + 1].is_punct('!') {
                return Vec::new();
            }
            i = skip_item(&toks, after);
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// If `#[cfg(test)]` (or `#![cfg(test)]`) starts at `i`, where it ends.
fn cfg_test_attribute(toks: &[Token], i: usize) -> Option<usize> {
    if !toks[i].is_punct('#') {
        return None;
    }
    let mut j = i + 1;
    if toks.get(j)?.is_punct('!') {
        j += 1;
    }
    let expected = [
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    for want in &expected {
        if toks.get(j)?.tok != *want {
            return None;
        }
        j += 1;
    }
    Some(j)
}

/// Past the item starting at `i` (its further attributes included): up to the `;` that
/// ends it, or the block that is its body (and a `;` right after it), or, for a field or
/// an arm, up to the `}` that closes the enclosing block (not consumed).
fn skip_item(toks: &[Token], mut i: usize) -> usize {
    let mut nesting = 0usize;
    while i < toks.len() {
        let t = &toks[i];
        if t.is_punct('(') || t.is_punct('[') {
            nesting += 1;
        } else if t.is_punct(')') || t.is_punct(']') {
            nesting = nesting.saturating_sub(1);
        } else if nesting == 0 && t.is_punct(';') {
            return i + 1;
        } else if nesting == 0 && t.is_punct('}') {
            return i;
        } else if nesting == 0 && t.is_punct('{') {
            let end = skip_block(toks, i);
            return if toks.get(end).is_some_and(|t| t.is_punct(';')) {
                end + 1
            } else {
                end
            };
        }
        i += 1;
    }
    i
}

/// Past the `}` matching the `{` at `i`.
pub fn skip_block(toks: &[Token], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        if toks[i].is_punct('{') {
            depth += 1;
        } else if toks[i].is_punct('}') {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}
