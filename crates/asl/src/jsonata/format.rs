//! `$formatNumber` (XPath F&O 3.1 decimal-format pictures), `$formatInteger` (decimal,
//! Roman, letter and English word pictures, with the `;o` ordinal modifier) and
//! `$formatBase`, as JSONata defines them.

use super::JsonataError;

fn err(code: &'static str, message: impl Into<String>) -> JsonataError {
    JsonataError::eval(code, message)
}

/// The decimal format (the options object of `$formatNumber`).
#[derive(Debug, Clone)]
pub(crate) struct DecimalFormat {
    pub decimal_separator: char,
    pub grouping_separator: char,
    pub exponent_separator: char,
    pub minus_sign: char,
    pub infinity: String,
    pub nan: String,
    pub percent: char,
    pub per_mille: char,
    pub zero_digit: char,
    pub digit: char,
    pub pattern_separator: char,
}

impl Default for DecimalFormat {
    fn default() -> Self {
        Self {
            decimal_separator: '.',
            grouping_separator: ',',
            exponent_separator: 'e',
            minus_sign: '-',
            infinity: "Infinity".into(),
            nan: "NaN".into(),
            percent: '%',
            per_mille: '\u{2030}',
            zero_digit: '0',
            digit: '#',
            pattern_separator: ';',
        }
    }
}

impl DecimalFormat {
    /// Applies one option of the options object; an unknown name or a value that is not a
    /// single character is an error.
    pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<(), JsonataError> {
        let one = || {
            let mut c = value.chars();
            match (c.next(), c.next()) {
                (Some(ch), None) => Ok(ch),
                _ => Err(err(
                    "D3080",
                    format!("The option \"{name}\" of $formatNumber must be a single character"),
                )),
            }
        };
        match name {
            "decimal-separator" => self.decimal_separator = one()?,
            "grouping-separator" => self.grouping_separator = one()?,
            "exponent-separator" => self.exponent_separator = one()?,
            "minus-sign" => self.minus_sign = one()?,
            "infinity" => self.infinity = value.to_string(),
            "NaN" => self.nan = value.to_string(),
            "percent" => self.percent = one()?,
            "per-mille" => self.per_mille = one()?,
            "zero-digit" => self.zero_digit = one()?,
            "digit" => self.digit = one()?,
            "pattern-separator" => self.pattern_separator = one()?,
            other => {
                return Err(err(
                    "D3080",
                    format!("Unknown option \"{other}\" of $formatNumber"),
                ));
            }
        }
        Ok(())
    }

    fn is_digit(&self, c: char) -> bool {
        let z = self.zero_digit as u32;
        (z..z + 10).contains(&(c as u32))
    }

    fn is_active(&self, c: char) -> bool {
        c == self.decimal_separator
            || c == self.grouping_separator
            || c == self.digit
            || c == self.exponent_separator
            || self.is_digit(c)
    }
}

#[derive(Debug)]
struct SubPicture {
    prefix: String,
    suffix: String,
    integer: Vec<char>,
    fraction: Vec<char>,
    exponent: Option<usize>,
    percent: bool,
    per_mille: bool,
}

fn parse_sub(p: &str, f: &DecimalFormat) -> Result<SubPicture, JsonataError> {
    let chars: Vec<char> = p.chars().collect();
    // `e` is the exponent separator only between the mantissa and exponent digits.
    let is_active_at = |i: usize| {
        let c = chars[i];
        if c == f.exponent_separator {
            let before = i > 0
                && (f.is_digit(chars[i - 1])
                    || chars[i - 1] == f.digit
                    || chars[i - 1] == f.decimal_separator);
            let after = chars.get(i + 1).is_some_and(|n| f.is_digit(*n));
            return before && after;
        }
        f.is_active(c)
    };
    let first = (0..chars.len()).find(|&i| is_active_at(i));
    let last = (0..chars.len()).rev().find(|&i| is_active_at(i));
    let (Some(first), Some(last)) = (first, last) else {
        return Err(err(
            "D3085",
            format!(
                "The mantissa part of a sub-picture must contain at least one character that is either an optional digit character or a member of the decimal digit family: {p}"
            ),
        ));
    };
    let prefix: String = chars[..first].iter().collect();
    let suffix: String = chars[last + 1..].iter().collect();
    let middle = &chars[first..=last];
    if let Some(c) = middle.iter().find(|c| !f.is_active(**c)) {
        return Err(err(
            "D3086",
            format!(
                "A sub-picture must not contain a passive character ({c}) that is preceded by an active character and that is followed by another active character"
            ),
        ));
    }
    let count = |c: char| chars.iter().filter(|x| **x == c).count();
    if count(f.decimal_separator) > 1 {
        return Err(err(
            "D3081",
            "A sub-picture must not contain more than one instance of the 'decimal-separator' character",
        ));
    }
    if count(f.percent) > 1 {
        return Err(err(
            "D3082",
            "A sub-picture must not contain more than one instance of the 'percent' character",
        ));
    }
    if count(f.per_mille) > 1 {
        return Err(err(
            "D3083",
            "A sub-picture must not contain more than one instance of the 'per-mille' character",
        ));
    }
    if count(f.percent) + count(f.per_mille) > 1 {
        return Err(err(
            "D3084",
            "A sub-picture must not contain both a 'percent' and a 'per-mille' character",
        ));
    }
    let (mantissa, exponent) = match middle.iter().position(|c| *c == f.exponent_separator) {
        Some(i) => {
            let exp = &middle[i + 1..];
            if exp.iter().any(|c| !f.is_digit(*c)) {
                return Err(err(
                    "D3093",
                    "The exponent part of a sub-picture must contain only decimal digit characters",
                ));
            }
            (&middle[..i], Some(exp.len()))
        }
        None => (middle, None),
    };
    if !mantissa.iter().any(|c| *c == f.digit || f.is_digit(*c)) {
        return Err(err(
            "D3085",
            format!(
                "The mantissa part of a sub-picture must contain at least one character that is either an optional digit character or a member of the decimal digit family: {p}"
            ),
        ));
    }
    let (integer, fraction) = match mantissa.iter().position(|c| *c == f.decimal_separator) {
        Some(i) => (mantissa[..i].to_vec(), mantissa[i + 1..].to_vec()),
        None => (mantissa.to_vec(), Vec::new()),
    };
    let g = f.grouping_separator;
    let has_dec = mantissa.contains(&f.decimal_separator);
    if (has_dec && (integer.last() == Some(&g) || fraction.first() == Some(&g)))
        || integer.windows(2).any(|w| w[0] == g && w[1] == g)
        || fraction.windows(2).any(|w| w[0] == g && w[1] == g)
    {
        return Err(err(
            "D3087",
            "A sub-picture must not contain a grouping-separator character that appears adjacent to a decimal-separator character, or two adjacent grouping separators",
        ));
    }
    if !has_dec && integer.last() == Some(&g) {
        return Err(err(
            "D3088",
            "The integer part of a sub-picture must not end with a grouping-separator",
        ));
    }
    let digits: Vec<char> = integer.iter().copied().filter(|c| *c != g).collect();
    if let Some(m) = digits.iter().position(|c| f.is_digit(*c))
        && digits[m..].contains(&f.digit)
    {
        return Err(err(
            "D3090",
            "The integer part of a sub-picture must not contain a member of the decimal digit family that is followed by an instance of the optional digit character",
        ));
    }
    let fdigits: Vec<char> = fraction.iter().copied().filter(|c| *c != g).collect();
    if let Some(o) = fdigits.iter().position(|c| *c == f.digit)
        && fdigits[o..].iter().any(|c| f.is_digit(*c))
    {
        return Err(err(
            "D3091",
            "The fractional part of a sub-picture must not contain an instance of the optional digit character that is followed by a member of the decimal digit family",
        ));
    }
    let percent = p.contains(f.percent);
    let per_mille = p.contains(f.per_mille);
    if exponent.is_some() && (percent || per_mille) {
        return Err(err(
            "D3092",
            "A sub-picture that contains a 'percent' or 'per-mille' character must not contain a character treated as an 'exponent-separator'",
        ));
    }
    Ok(SubPicture {
        prefix,
        suffix,
        integer,
        fraction,
        exponent,
        percent,
        per_mille,
    })
}

/// Grouping positions of the integer part, counted in digits from the right; `Some(n)` when
/// they are regular (every `n` digits).
fn grouping(part: &[char], f: &DecimalFormat, from_right: bool) -> (Vec<usize>, Option<usize>) {
    let mut positions = Vec::new();
    let mut digits = 0;
    let seq: Vec<char> = if from_right {
        part.iter().rev().copied().collect()
    } else {
        part.to_vec()
    };
    for c in seq {
        if c == f.grouping_separator {
            positions.push(digits);
        } else {
            digits += 1;
        }
    }
    let regular = match positions.first() {
        Some(&first)
            if first > 0
                && positions
                    .iter()
                    .enumerate()
                    .all(|(i, p)| *p == first * (i + 1)) =>
        {
            Some(first)
        }
        _ => None,
    };
    (positions, regular)
}

/// Rounds half to even at `places` decimals, shifting the decimal text rather than
/// multiplying (so 34.555 is 3455.5 hundredths, as JSONata computes it).
fn round_half_even(x: f64, places: usize) -> f64 {
    let shifted: f64 = format!("{x}e{places}").parse().unwrap_or(x);
    let r = shifted.round();
    let r = if (shifted - shifted.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - shifted.signum()
    } else {
        r
    };
    format!("{r}e-{places}").parse().unwrap_or(r)
}

pub(crate) fn format_number(
    value: f64,
    picture: &str,
    f: &DecimalFormat,
) -> Result<String, JsonataError> {
    let parts: Vec<&str> = picture.split(f.pattern_separator).collect();
    if parts.len() > 2 {
        return Err(err(
            "D3080",
            "The picture string must not contain more than one instance of the 'pattern-separator' character",
        ));
    }
    let subs: Vec<SubPicture> = parts
        .iter()
        .map(|p| parse_sub(p, f))
        .collect::<Result<_, _>>()?;
    if value.is_nan() {
        return Ok(f.nan.clone());
    }
    let negative = value < 0.0;
    let sub = if negative && subs.len() == 2 {
        &subs[1]
    } else {
        &subs[0]
    };
    let mut x = value.abs();
    if sub.percent {
        x *= 100.0;
    } else if sub.per_mille {
        x *= 1000.0;
    }
    let g = f.grouping_separator;
    let is_mandatory = |c: &char| f.is_digit(*c);
    let mut min_int = sub.integer.iter().filter(|c| is_mandatory(c)).count();
    let max_int_digits = sub.integer.iter().filter(|c| **c != g).count();
    let mut min_frac = sub.fraction.iter().filter(|c| is_mandatory(c)).count();
    let max_frac = sub.fraction.iter().filter(|c| **c != g).count();
    if min_int == 0 && max_frac == 0 {
        if sub.exponent.is_some() {
            min_frac = 1;
        } else {
            min_int = 1;
        }
    }
    if sub.exponent.is_some() && min_int == 0 && max_int_digits == 0 && min_frac == 0 {
        min_frac = 1;
    }
    let mut exponent = 0i32;
    if let Some(_) = sub.exponent
        && x != 0.0
    {
        // Scale so that the integer part has `min_int` digits (below 1 when it is zero).
        let target = min_int as i32;
        let mag = x.log10().floor() as i32 + 1;
        exponent = mag - target;
        x /= 10f64.powi(exponent);
        if round_half_even(x, max_frac) >= 10f64.powi(target.max(0)) && target > 0 {
            x /= 10.0;
            exponent += 1;
        }
    }
    if x.is_infinite() {
        let body = f.infinity.clone();
        return Ok(assemble(negative, &subs, sub, body, f));
    }
    let rounded = round_half_even(x, max_frac);
    let text = format!("{rounded:.max_frac$}");
    let (int_s, frac_s) = match text.split_once('.') {
        Some((i, fr)) => (i.to_string(), fr.to_string()),
        None => (text.clone(), String::new()),
    };
    let mut int_s = int_s.trim_start_matches('0').to_string();
    while int_s.len() < min_int {
        int_s.insert(0, '0');
    }
    // With an exponent the mantissa of `#.00e0` is below one, shown with its zero (0.23e0).
    if int_s.is_empty() && sub.exponent.is_some() && sub.integer.contains(&f.digit) {
        int_s.push('0');
    }
    let mut frac_s = frac_s;
    while frac_s.len() > min_frac && frac_s.ends_with('0') {
        frac_s.pop();
    }
    // Grouping separators in the integer part.
    let (positions, regular) = grouping(&sub.integer, f, true);
    let int_digits: Vec<char> = int_s.chars().collect();
    let mut grouped = String::new();
    let n = int_digits.len();
    for (i, c) in int_digits.iter().enumerate() {
        let from_right = n - i;
        if i > 0 {
            let sep = match regular {
                Some(r) => from_right % r == 0,
                None => positions.contains(&from_right),
            };
            if sep {
                grouped.push(g);
            }
        }
        grouped.push(*c);
    }
    let (fpositions, _) = grouping(&sub.fraction, f, false);
    let mut fgrouped = String::new();
    for (i, c) in frac_s.chars().enumerate() {
        if i > 0 && fpositions.contains(&i) {
            fgrouped.push(g);
        }
        fgrouped.push(c);
    }
    let mut body = grouped;
    if !fgrouped.is_empty() || (body.is_empty() && max_frac > 0) {
        body.push(f.decimal_separator);
        body.push_str(&fgrouped);
    }
    if let Some(min_exp) = sub.exponent {
        body.push(f.exponent_separator);
        if exponent < 0 {
            body.push(f.minus_sign);
        }
        body.push_str(&format!("{:0>min_exp$}", exponent.unsigned_abs()));
    }
    // Digits in the chosen zero-digit family.
    let z = f.zero_digit as u32;
    let body: String = body
        .chars()
        .map(|c| match c.to_digit(10) {
            Some(d) if z != '0' as u32 => char::from_u32(z + d).unwrap_or(c),
            _ => c,
        })
        .collect();
    Ok(assemble(negative, &subs, sub, body, f))
}

fn assemble(
    negative: bool,
    subs: &[SubPicture],
    sub: &SubPicture,
    body: String,
    f: &DecimalFormat,
) -> String {
    if negative && subs.len() == 1 {
        format!("{}{}{body}{}", f.minus_sign, sub.prefix, sub.suffix)
    } else {
        format!("{}{body}{}", sub.prefix, sub.suffix)
    }
}

// ------------------------------------------------------------------ formatInteger

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const SCALES: [(u128, &str); 5] = [
    (1_000_000_000_000_000, "quadrillion"),
    (1_000_000_000_000, "trillion"),
    (1_000_000_000, "billion"),
    (1_000_000, "million"),
    (1_000, "thousand"),
];

fn words(n: u128) -> String {
    if n < 20 {
        return ONES[n as usize].to_string();
    }
    if n < 100 {
        let t = TENS[(n / 10) as usize];
        return if n % 10 == 0 {
            t.to_string()
        } else {
            format!("{t}-{}", ONES[(n % 10) as usize])
        };
    }
    if n < 1000 {
        let h = format!("{} hundred", ONES[(n / 100) as usize]);
        return if n % 100 == 0 {
            h
        } else {
            format!("{h} and {}", words(n % 100))
        };
    }
    for (scale, name) in SCALES {
        if n >= scale {
            let head = format!("{} {name}", words(n / scale));
            let rest = n % scale;
            return match rest {
                0 => head,
                r if r < 100 => format!("{head} and {}", words(r)),
                r => format!("{head}, {}", words(r)),
            };
        }
    }
    n.to_string()
}

fn ordinal_word(cardinal: &str) -> String {
    const IRREGULAR: [(&str, &str); 12] = [
        ("one", "first"),
        ("two", "second"),
        ("three", "third"),
        ("five", "fifth"),
        ("eight", "eighth"),
        ("nine", "ninth"),
        ("twelve", "twelfth"),
        ("twenty", "twentieth"),
        ("thirty", "thirtieth"),
        ("forty", "fortieth"),
        ("fifty", "fiftieth"),
        ("sixty", "sixtieth"),
    ];
    const MORE: [(&str, &str); 3] = [
        ("seventy", "seventieth"),
        ("eighty", "eightieth"),
        ("ninety", "ninetieth"),
    ];
    let split = cardinal.rfind([' ', '-']).map_or(0, |i| i + 1);
    let (head, last) = cardinal.split_at(split);
    let last_ord = IRREGULAR
        .iter()
        .chain(MORE.iter())
        .find(|(c, _)| *c == last)
        .map_or_else(|| format!("{last}th"), |(_, o)| (*o).to_string());
    format!("{head}{last_ord}")
}

fn ordinal_suffix(n: u128) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

fn roman(mut n: u128) -> String {
    const TABLE: [(u128, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut out = String::new();
    for (v, s) in TABLE {
        while n >= v {
            out.push_str(s);
            n -= v;
        }
    }
    out
}

fn letters(mut n: u128, base: char) -> String {
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.push(char::from_u32(base as u32 + (n % 26) as u32).unwrap_or('?'));
        n /= 26;
    }
    out.iter().rev().collect()
}

pub(crate) fn format_integer(value: f64, picture: &str) -> Result<String, JsonataError> {
    let (primary, modifier) = match picture.rfind(';') {
        Some(i) => (&picture[..i], &picture[i + 1..]),
        None => (picture, ""),
    };
    let ordinal = modifier.starts_with('o');
    if !modifier.is_empty() && !modifier.starts_with(['o', 'c']) {
        return Err(err(
            "D3132",
            format!("Unknown component specifier in $formatInteger picture: {modifier}"),
        ));
    }
    let negative = value < 0.0;
    let n = value.abs().round() as u128;
    let sign = if negative { "-" } else { "" };
    let body = match primary {
        "A" => letters(n, 'A'),
        "a" => letters(n, 'a'),
        "I" => roman(n),
        "i" => roman(n).to_lowercase(),
        "w" | "W" | "Ww" => {
            let w = words(n);
            let w = if ordinal { ordinal_word(&w) } else { w };
            match primary {
                "W" => w.to_uppercase(),
                "Ww" => w
                    .split(' ')
                    .map(|part| {
                        let mut c = part.chars();
                        c.next().map_or(String::new(), |f| {
                            f.to_uppercase().collect::<String>() + c.as_str()
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => w,
            }
        }
        p => decimal_pattern(n, p, ordinal)?,
    };
    Ok(format!("{sign}{body}"))
}

fn decimal_pattern(n: u128, p: &str, ordinal: bool) -> Result<String, JsonataError> {
    let chars: Vec<char> = p.chars().collect();
    if chars.is_empty() || !chars.iter().any(|c| c.is_ascii_digit() || *c == '#') {
        return Err(err(
            "D3130",
            format!(
                "Formatting or parsing an integer as a sequence starting with {p} is not supported by this implementation"
            ),
        ));
    }
    if chars
        .iter()
        .any(|c| c.is_alphanumeric() && !c.is_ascii_digit())
    {
        return Err(err(
            "D3131",
            format!(
                "In a decimal digit pattern, all digits must be from the same decimal group: {p}"
            ),
        ));
    }
    let min = chars.iter().filter(|c| c.is_ascii_digit()).count();
    // Separators: (position in digits from the right, character).
    let mut seps = Vec::new();
    let mut digits = 0;
    for c in chars.iter().rev() {
        if c.is_ascii_digit() || *c == '#' {
            digits += 1;
        } else {
            seps.push((digits, *c));
        }
    }
    let regular = match seps.first() {
        Some(&(first, ch))
            if first > 0
                && seps
                    .iter()
                    .enumerate()
                    .all(|(i, (pos, c))| *pos == first * (i + 1) && *c == ch) =>
        {
            Some((first, ch))
        }
        _ => None,
    };
    let s = format!("{n:0>min$}");
    let ds: Vec<char> = s.chars().collect();
    let len = ds.len();
    let mut out = String::new();
    for (i, c) in ds.iter().enumerate() {
        let from_right = len - i;
        if i > 0 {
            match regular {
                Some((r, ch)) if from_right % r == 0 => out.push(ch),
                None => {
                    if let Some((_, ch)) = seps.iter().find(|(pos, _)| *pos == from_right) {
                        out.push(*ch);
                    }
                }
                _ => {}
            }
        }
        out.push(*c);
    }
    if ordinal {
        out.push_str(ordinal_suffix(n));
    }
    Ok(out)
}

pub(crate) fn format_base(value: f64, radix: f64) -> Result<String, JsonataError> {
    let r = radix.round();
    if !(2.0..=36.0).contains(&r) {
        return Err(err(
            "D3100",
            format!(
                "The radix of the formatBase function must be between 2 and 36. It was given {radix}"
            ),
        ));
    }
    let r = r as u32;
    let v = round_half_even(value, 0);
    let negative = v < 0.0;
    let mut n = v.abs() as u128;
    if n == 0 {
        return Ok("0".into());
    }
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(std::char::from_digit((n % r as u128) as u32, r).unwrap_or('?'));
        n /= r as u128;
    }
    let body: String = digits.iter().rev().collect();
    Ok(if negative { format!("-{body}") } else { body })
}
