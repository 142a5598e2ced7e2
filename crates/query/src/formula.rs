//! Formulas across trend series: `A/B`, `(A+B)/C`, `A*100/B`, `-A + 2.5`.
//!
//! Letters name series by position (`A` is `series[0]`, case-insensitive); numbers are decimal
//! (`2`, `0.5`); operators are `+ - * /` with the usual precedence, unary minus, and parentheses.

use std::fmt;

/// Longest formula accepted (characters).
pub const MAX_FORMULA_LEN: usize = 500;
/// Deepest nesting of parentheses and unary minus.
pub const MAX_FORMULA_DEPTH: usize = 32;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The value of a series, by index (`A` = 0).
    Series(usize),
    /// A constant.
    Number(f64),
    /// `-x`.
    Neg(Box<Expr>),
    /// `x op y`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The series indexes the formula reads, ascending, without repeats.
    pub fn series(&self) -> Vec<usize> {
        fn walk(e: &Expr, out: &mut Vec<usize>) {
            match e {
                Expr::Series(i) => out.push(*i),
                Expr::Number(_) => {}
                Expr::Neg(x) => walk(x, out),
                Expr::Binary(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Evaluates with `values[i]` for series `i`. Division by zero, and a series index without
    /// a value, give `None` (shown as no value, not as infinity).
    pub fn eval(&self, values: &[f64]) -> Option<f64> {
        Some(match self {
            Expr::Series(i) => *values.get(*i)?,
            Expr::Number(n) => *n,
            Expr::Neg(x) => -x.eval(values)?,
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.eval(values)?, b.eval(values)?);
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div if b == 0.0 => return None,
                    BinOp::Div => a / b,
                }
            }
        })
    }
}

/// Why a formula did not parse: a message and the character position (0-based) it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormulaError {
    /// Character offset of the problem.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FormulaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.position + 1)
    }
}

impl std::error::Error for FormulaError {}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Letter(usize),
    Num(f64),
    Op(char),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, FormulaError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let err = |m: &str| FormulaError {
            position: i,
            message: m.to_string(),
        };
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '+' | '-' | '*' | '/' => {
                out.push((i, Tok::Op(c)));
                i += 1;
            }
            '(' => {
                out.push((i, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((i, Tok::Close));
                i += 1;
            }
            c if c.is_ascii_alphabetic() => {
                if chars.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric()) {
                    return Err(err("series are named by one letter (A, B, …)"));
                }
                let idx = (c.to_ascii_uppercase() as u8 - b'A') as usize;
                out.push((i, Tok::Letter(idx)));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => out.push((start, Tok::Num(n))),
                    _ => {
                        return Err(FormulaError {
                            position: start,
                            message: format!("`{text}` is not a number"),
                        })
                    }
                }
                if chars.get(i).is_some_and(|c| c.is_ascii_alphabetic()) {
                    return Err(FormulaError {
                        position: i,
                        message: "expected an operator between a number and a series".into(),
                    });
                }
            }
            _ => return Err(err(&format!("unexpected `{c}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).map(|t| t.1)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |t| t.0)
    }

    fn fail<T>(&self, m: impl Into<String>) -> Result<T, FormulaError> {
        Err(FormulaError {
            position: self.at(),
            message: m.into(),
        })
    }

    fn expr(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.term()?;
        while let Some(Tok::Op(c @ ('+' | '-'))) = self.peek() {
            self.pos += 1;
            let right = self.term()?;
            let op = if c == '+' { BinOp::Add } else { BinOp::Sub };
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.unary()?;
        while let Some(Tok::Op(c @ ('*' | '/'))) = self.peek() {
            self.pos += 1;
            let right = self.unary()?;
            let op = if c == '*' { BinOp::Mul } else { BinOp::Div };
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FormulaError> {
        self.depth += 1;
        if self.depth > MAX_FORMULA_DEPTH {
            return self.fail("nested too deeply");
        }
        let r = if self.peek() == Some(Tok::Op('-')) {
            self.pos += 1;
            self.unary().map(|x| Expr::Neg(Box::new(x)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        r
    }

    fn primary(&mut self) -> Result<Expr, FormulaError> {
        match self.peek() {
            Some(Tok::Letter(i)) => {
                self.pos += 1;
                Ok(Expr::Series(i))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Number(n))
            }
            Some(Tok::Open) => {
                let open_at = self.at();
                self.pos += 1;
                let inner = self.expr()?;
                if self.peek() != Some(Tok::Close) {
                    return Err(FormulaError {
                        position: open_at,
                        message: "unclosed `(`".into(),
                    });
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Tok::Close) => self.fail("unexpected `)`"),
            Some(Tok::Op(c)) => self.fail(format!("expected a series or a number before `{c}`")),
            None => self.fail("expected a series or a number at the end"),
        }
    }
}

/// Parses a formula. Series letters are not checked against a series count here; see
/// [`check_formula`].
pub fn parse_formula(s: &str) -> Result<Expr, FormulaError> {
    if s.chars().count() > MAX_FORMULA_LEN {
        return Err(FormulaError {
            position: MAX_FORMULA_LEN,
            message: format!("longer than {MAX_FORMULA_LEN} characters"),
        });
    }
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(FormulaError {
            position: 0,
            message: "is empty".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: s.chars().count(),
        depth: 0,
    };
    let e = p.expr()?;
    match p.peek() {
        None => Ok(e),
        Some(Tok::Close) => p.fail("unexpected `)`"),
        Some(_) => p.fail("expected an operator"),
    }
}

/// Parses a formula and checks that every letter names one of `series_count` series.
pub fn check_formula(s: &str, series_count: usize) -> Result<Expr, FormulaError> {
    let e = parse_formula(s)?;
    if let Some(&i) = e.series().iter().find(|&&i| i >= series_count) {
        let letter = (b'A' + i as u8) as char;
        let last = (b'A' + series_count.saturating_sub(1) as u8) as char;
        let position = s
            .chars()
            .position(|c| c.to_ascii_uppercase() == letter)
            .unwrap_or(0);
        return Err(FormulaError {
            position,
            message: format!("`{letter}` names no series: there are {series_count} (A to {last})"),
        });
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(i: usize) -> Box<Expr> {
        Box::new(Expr::Series(i))
    }

    #[test]
    fn valid_formulas() {
        let cases: &[(&str, Expr)] = &[
            ("A", Expr::Series(0)),
            ("b", Expr::Series(1)),
            ("A/B", Expr::Binary(BinOp::Div, s(0), s(1))),
            (
                "(A+B)/C",
                Expr::Binary(
                    BinOp::Div,
                    Box::new(Expr::Binary(BinOp::Add, s(0), s(1))),
                    s(2),
                ),
            ),
            (
                "A + B * C",
                Expr::Binary(
                    BinOp::Add,
                    s(0),
                    Box::new(Expr::Binary(BinOp::Mul, s(1), s(2))),
                ),
            ),
            (
                "A - B - C",
                Expr::Binary(
                    BinOp::Sub,
                    Box::new(Expr::Binary(BinOp::Sub, s(0), s(1))),
                    s(2),
                ),
            ),
            (
                "A*100 / B",
                Expr::Binary(
                    BinOp::Div,
                    Box::new(Expr::Binary(
                        BinOp::Mul,
                        s(0),
                        Box::new(Expr::Number(100.0)),
                    )),
                    s(1),
                ),
            ),
            ("-A", Expr::Neg(s(0))),
            ("0.5", Expr::Number(0.5)),
            ("((A))", Expr::Series(0)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_formula(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid_formulas() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "is empty"),
            ("   ", 0, "is empty"),
            ("A/", 2, "expected a series or a number at the end"),
            ("A B", 2, "expected an operator"),
            ("(A+B", 0, "unclosed `(`"),
            ("A+B)", 3, "unexpected `)`"),
            ("AB", 0, "series are named by one letter (A, B, …)"),
            ("A % B", 2, "unexpected `%`"),
            ("1.2.3", 0, "`1.2.3` is not a number"),
            (
                "2A",
                1,
                "expected an operator between a number and a series",
            ),
            ("*A", 0, "expected a series or a number before `*`"),
            ("()", 1, "unexpected `)`"),
        ];
        for (text, position, message) in cases {
            let err = parse_formula(text).unwrap_err();
            assert_eq!(
                (err.position, err.message.as_str()),
                (*position, *message),
                "{text}"
            );
        }
    }

    #[test]
    fn letters_must_name_series() {
        assert!(check_formula("A/B", 2).is_ok());
        let err = check_formula("A/C", 2).unwrap_err();
        assert_eq!(err.position, 2);
        assert_eq!(err.message, "`C` names no series: there are 2 (A to B)");
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}A{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(
            parse_formula(&deep).unwrap_err().message,
            "nested too deeply"
        );
        let negs = format!("{}A", "-".repeat(200));
        assert_eq!(
            parse_formula(&negs).unwrap_err().message,
            "nested too deeply"
        );
    }

    #[test]
    fn evaluation() {
        let e = parse_formula("(A+B)/C").unwrap();
        assert_eq!(e.eval(&[1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(e.eval(&[1.0, 3.0, 0.0]), None);
        assert_eq!(e.series(), vec![0, 1, 2]);
        assert_eq!(parse_formula("-A*2").unwrap().eval(&[3.0]), Some(-6.0));
    }
}
