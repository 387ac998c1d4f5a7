//! UCUM unit syntax (<https://ucum.org/ucum>, §2 "Syntax Rules"): a parser of the grammar
//! (`/`-leading terms, `.` and `/` operators, parentheses, integer factors, exponents with
//! optional sign, `{annotations}`, metric prefixes on metric atoms) over the atoms in common
//! clinical use. A code that parses is well formed; a code that does not is either malformed
//! or uses an atom outside this table (the message says which token).

/// Prefixes (case-sensitive UCUM symbols), longest first so `da` wins over `d`.
const PREFIXES: &[&str] = &[
    "da", "Ki", "Mi", "Gi", "Ti", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u",
    "n", "p", "f", "a", "z", "y",
];

/// Atoms that take a prefix (UCUM "metric" units).
const METRIC: &[&str] = &[
    "m", "s", "g", "rad", "K", "C", "cd", "mol", "sr", "Hz", "N", "Pa", "J", "W", "A", "V", "F",
    "Ohm", "S", "Wb", "Cel", "T", "H", "lm", "lx", "Bq", "Gy", "Sv", "L", "l", "ar", "t", "bar",
    "u", "eV", "pc", "[c]", "[h]", "[k]", "[eps_0]", "[mu_0]", "[e]", "[m_e]", "[m_p]", "[G]",
    "[g]", "[ly]", "gf", "Ky", "Gal", "dyn", "erg", "P", "Bi", "St", "Mx", "G", "Oe", "Gb", "sb",
    "Lmb", "ph", "Ci", "R", "RAD", "REM", "cal", "[iU]", "[IU]", "eq", "osm", "g%", "bit", "By",
    "Bd", "mho", "st", "Np", "B", "B[SPL]", "B[V]", "B[mV]", "B[uV]", "B[10.nV]", "B[W]", "B[kW]",
    "U", "kat", "m[Hg]", "m[H2O]", "[CFU]", "atm", "att", "[S]", "[HPF]", "[LPF]", "[Lf]", "[FEU]",
    "[ELU]", "[EU]", "[PFU]", "[FFU]", "[BAU]", "[AU]", "[AU]",
];

/// Atoms that take no prefix.
const NON_METRIC: &[&str] = &[
    "10*",
    "10^",
    "[pi]",
    "%",
    "[ppth]",
    "[ppm]",
    "[ppb]",
    "[pptr]",
    "mo",
    "mo_j",
    "mo_g",
    "mo_s",
    "a",
    "a_j",
    "a_t",
    "a_g",
    "wk",
    "d",
    "h",
    "min",
    "'",
    "''",
    "deg",
    "gon",
    "circ",
    "sph",
    "[in_i]",
    "[ft_i]",
    "[yd_i]",
    "[mi_i]",
    "[fth_i]",
    "[nmi_i]",
    "[kn_i]",
    "[sin_i]",
    "[sft_i]",
    "[syd_i]",
    "[cin_i]",
    "[cft_i]",
    "[cyd_i]",
    "[bf_i]",
    "[cr_i]",
    "[mil_i]",
    "[cml_i]",
    "[hd_i]",
    "[ft_us]",
    "[yd_us]",
    "[in_us]",
    "[rd_us]",
    "[ch_us]",
    "[mi_us]",
    "[acr_us]",
    "[gal_us]",
    "[bbl_us]",
    "[qt_us]",
    "[pt_us]",
    "[gil_us]",
    "[foz_us]",
    "[fdr_us]",
    "[min_us]",
    "[crd_us]",
    "[bu_us]",
    "[gal_wi]",
    "[pk_us]",
    "[dqt_us]",
    "[dpt_us]",
    "[tbs_us]",
    "[tsp_us]",
    "[cup_us]",
    "[foz_m]",
    "[cup_m]",
    "[tsp_m]",
    "[tbs_m]",
    "[gal_br]",
    "[pk_br]",
    "[bu_br]",
    "[qt_br]",
    "[pt_br]",
    "[gil_br]",
    "[foz_br]",
    "[fdr_br]",
    "[min_br]",
    "[gr]",
    "[lb_av]",
    "[oz_av]",
    "[dr_av]",
    "[scwt_av]",
    "[lcwt_av]",
    "[ston_av]",
    "[lton_av]",
    "[stone_av]",
    "[pwt_tr]",
    "[oz_tr]",
    "[lb_tr]",
    "[sc_ap]",
    "[dr_ap]",
    "[oz_ap]",
    "[lb_ap]",
    "[oz_m]",
    "[lne]",
    "[pnt]",
    "[pca]",
    "[pied]",
    "[pouce]",
    "[ligne]",
    "[didot]",
    "[cicero]",
    "[degF]",
    "[degR]",
    "[degRe]",
    "cal_[15]",
    "cal_[20]",
    "cal_m",
    "cal_IT",
    "cal_th",
    "[Cal]",
    "[Btu]",
    "[Btu_39]",
    "[Btu_59]",
    "[Btu_60]",
    "[Btu_m]",
    "[Btu_IT]",
    "[Btu_th]",
    "[HP]",
    "tex",
    "[den]",
    "m[H2O]",
    "[in_i'H2O]",
    "[in_i'Hg]",
    "[PRU]",
    "[wood'U]",
    "[diop]",
    "[p'diop]",
    "%[slope]",
    "[mesh_i]",
    "[Ch]",
    "[drp]",
    "[hnsf'U]",
    "[MET]",
    "[hp'_X]",
    "[hp'_C]",
    "[hp'_M]",
    "[hp'_Q]",
    "[hp_X]",
    "[hp_C]",
    "[hp_M]",
    "[hp_Q]",
    "[kp_X]",
    "[kp_C]",
    "[kp_M]",
    "[kp_Q]",
    "[pH]",
    "[smgy'U]",
    "[arb'U]",
    "[USP'U]",
    "[GPL'U]",
    "[MPL'U]",
    "[APL'U]",
    "[beth'U]",
    "[anti'Xa'U]",
    "[todd'U]",
    "[dye'U]",
    "[ka'U]",
    "[knk'U]",
    "[mclg'U]",
    "[tb'U]",
    "[D'ag'U]",
    "[IR]",
    "[Amb'a'1'U]",
    "[CCID_50]",
    "[TCID_50]",
    "[EID_50]",
    "[psi]",
    "[lbf_av]",
    "[car_m]",
    "[car_Au]",
    "[mu]",
    "[ppt]",
];

/// Time units an Age is given in (the `age-units` value set's codes, and the other UCUM
/// time atoms).
pub const TIME_UNITS: &[&str] = &[
    "a", "mo", "wk", "d", "h", "min", "s", "ms", "a_j", "a_t", "mo_j", "mo_s", "mo_g", "a_g",
];

/// Checks a UCUM code's syntax. `Err` names the token that is not UCUM.
pub fn parse(code: &str) -> Result<(), String> {
    if code.is_empty() {
        return Err("an empty unit".into());
    }
    if code.bytes().any(|b| !(33..=126).contains(&b)) {
        return Err("a UCUM code has no spaces or non-ASCII characters".into());
    }
    let mut p = Parser {
        s: code.as_bytes(),
        i: 0,
        depth: 0,
    };
    if p.peek() == Some(b'/') {
        p.i += 1;
    }
    p.term()?;
    if p.i != p.s.len() {
        return Err(format!("unexpected `{}`", &code[p.i..]));
    }
    Ok(())
}

struct Parser<'s> {
    s: &'s [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn term(&mut self) -> Result<(), String> {
        self.component()?;
        while matches!(self.peek(), Some(b'.' | b'/')) {
            self.i += 1;
            self.component()?;
        }
        Ok(())
    }

    fn component(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(b'(') => {
                self.depth += 1;
                if self.depth > 16 {
                    return Err("parentheses nested too deeply".into());
                }
                self.i += 1;
                self.term()?;
                if self.peek() != Some(b')') {
                    return Err("a `(` without its `)`".into());
                }
                self.i += 1;
                self.depth -= 1;
                self.exponent();
                self.annotation()
            }
            Some(b'{') => self.annotation(),
            Some(_) => {
                let start = self.i;
                // A symbol runs to the next operator, parenthesis or annotation; brackets
                // are part of it (`[in_i]`, `m[Hg]`).
                while let Some(c) = self.peek() {
                    match c {
                        b'[' => {
                            while let Some(c) = self.peek() {
                                self.i += 1;
                                if c == b']' {
                                    break;
                                }
                            }
                        }
                        b'.' | b'/' | b'(' | b')' | b'{' | b'}' => break,
                        _ => self.i += 1,
                    }
                }
                let token = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                simple_unit(token)?;
                self.annotation()
            }
            None => Err("a unit is missing after an operator".into()),
        }
    }

    fn exponent(&mut self) {
        if matches!(self.peek(), Some(b'+' | b'-'))
            && self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit)
        {
            self.i += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn annotation(&mut self) -> Result<(), String> {
        if self.peek() != Some(b'{') {
            return Ok(());
        }
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'}' {
                return Ok(());
            }
        }
        Err("a `{` without its `}`".into())
    }
}

/// A factor (`1000`), or an atom with an optional prefix and exponent (`mg`, `m2`, `s-1`).
fn simple_unit(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("a unit is missing between operators".into());
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let unknown = || Err(format!("`{token}` is not a UCUM unit"));
    // Split a trailing exponent off (`cm2`, `s-1`), but not the digits of `10*`/`10^` alone.
    let body_end = token.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let candidates: Vec<&str> = if body_end < token.len() && body_end > 0 {
        let body = &token[..body_end];
        let body = body.strip_suffix(['+', '-']).unwrap_or(body);
        vec![token, body]
    } else {
        vec![token]
    };
    for sym in candidates {
        if sym.is_empty() {
            continue;
        }
        if NON_METRIC.contains(&sym) || METRIC.contains(&sym) {
            return Ok(());
        }
        for p in PREFIXES {
            if let Some(rest) = sym.strip_prefix(p)
                && METRIC.contains(&rest)
            {
                return Ok(());
            }
        }
    }
    unknown()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_clinical_units_parse() {
        for code in [
            "mg",
            "mg/dL",
            "kg/m2",
            "/min",
            "{score}",
            "10*3/uL",
            "%",
            "mm[Hg]",
            "mL/min/{1.73_m2}",
            "[degF]",
            "Cel",
            "fL",
            "pg",
            "U/L",
            "mmol/L",
            "1",
            "/[HPF]",
            "kg.m/s2",
            "s-1",
            "(8.h){shift}",
            "[lb_av]",
            "[in_i]",
            "{beats}/min",
            "a",
            "mo",
            "wk",
            "ug/(24.h)",
            "10*9/L",
            "[IU]/L",
            "meq/L",
            "mosm/kg",
            "dB",
            "kat/kg",
            "[pH]",
            "g.m-2",
        ] {
            assert_eq!(parse(code), Ok(()), "{code}");
        }
    }

    #[test]
    fn malformed_or_unknown_units_are_refused() {
        for code in [
            "", "mg/", "mg//dL", "(mg", "{score", "mg dL", "xyz", "kgg", "mgm", "µg", "/",
            "Mg/dL.", "years",
        ] {
            assert!(parse(code).is_err(), "{code}");
        }
    }
}
