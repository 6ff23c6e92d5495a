use proptest::prelude::*;

use super::*;

fn classify(json: &str) -> Result<CleanTrade, Reason> {
    clean(Some(json.as_bytes()))
}

fn reason(json: &str) -> Reason {
    match classify(json) {
        Ok(t) => panic!("expected quarantine for {json}, got {t:?}"),
        Err(r) => r,
    }
}

const GOOD: &str = r#"{"s":"AAPL","p":189.31,"t":1763997374633,"v":40,"c":["1","12"]}"#;

#[test]
fn accepts_a_finnhub_trade() {
    let t = classify(GOOD).unwrap();
    assert_eq!(t.symbol, "AAPL");
    assert_eq!(t.price, 189.31);
    assert_eq!(t.volume, 40.0);
    assert_eq!(t.ts, 1_763_997_374_633);
    let c: Vec<&str> = t.conditions.as_ref().unwrap().iter().map(|c| c.as_str()).collect();
    assert_eq!(c, ["1", "12"]);
}

#[test]
fn empty_and_oversized_payloads_are_quarantined() {
    assert_eq!(clean(None), Err(Reason::EmptyPayload));
    assert_eq!(clean(Some(b"")), Err(Reason::EmptyPayload));
    let mut big = GOOD.as_bytes().to_vec();
    big.resize(MAX_PAYLOAD + 1, b' ');
    assert_eq!(clean(Some(&big)), Err(Reason::Oversized));
    // Exactly at the bound it is still parsed (trailing whitespace is valid JSON).
    big.truncate(MAX_PAYLOAD);
    assert!(clean(Some(&big)).is_ok());
}

#[test]
fn malformed_json_is_quarantined() {
    for bad in [r#"{"s":"AAPL","p":1"#, "{", "nul", r#"{"s":"AAPL"} x"#, "\u{1}"] {
        assert_eq!(reason(bad), Reason::MalformedJson, "{bad:?}");
    }
    assert_eq!(clean(Some(b"{\"s\":\"\xff\"}")), Err(Reason::MalformedJson));
}

#[test]
fn non_objects_are_quarantined() {
    for doc in ["[1,2]", "3", "\"AAPL\"", "null", "true"] {
        assert_eq!(reason(doc), Reason::NotObject, "{doc}");
    }
}

#[test]
fn duplicate_keys_are_quarantined() {
    assert_eq!(reason(r#"{"s":"AAPL","p":1,"p":2,"t":1763997374633,"v":1}"#), Reason::DuplicateField);
}

#[test]
fn every_required_field_is_checked() {
    for missing in ["s", "p", "t", "v"] {
        let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
        obj.remove(missing);
        let json = serde_json::to_string(&obj).unwrap();
        assert_eq!(reason(&json), Reason::MissingField, "without {missing}");
    }
}

#[test]
fn wrong_types_are_quarantined() {
    for json in [
        r#"{"s":1,"p":1,"t":1763997374633,"v":1}"#,
        r#"{"s":"A","p":"1.5","t":1763997374633,"v":1}"#,
        r#"{"s":"A","p":1,"t":"1763997374633","v":1}"#,
        r#"{"s":"A","p":1,"t":1763997374633,"v":null}"#,
        r#"{"s":["A"],"p":1,"t":1763997374633,"v":1}"#,
    ] {
        assert_eq!(reason(json), Reason::BadType, "{json}");
    }
}

#[test]
fn symbol_rules() {
    let with = |s: &str| format!(r#"{{"s":{},"p":1,"t":1763997374633,"v":1}}"#, serde_json::json!(s));
    assert_eq!(reason(&with("")), Reason::BadSymbol);
    assert_eq!(reason(&with("AA\nPL")), Reason::BadSymbol);
    assert_eq!(reason(&with(&"X".repeat(MAX_SYMBOL_BYTES + 1))), Reason::BadSymbol);
    assert!(classify(&with(&"X".repeat(MAX_SYMBOL_BYTES))).is_ok());
    assert_eq!(classify(&with("BINANCE:BTCUSDT")).unwrap().symbol, "BINANCE:BTCUSDT");
    // Controls outside C0 are controls too (DEL, NEL in C1); other non-ASCII text is not.
    assert_eq!(reason(&with("AA\u{7f}PL")), Reason::BadSymbol);
    assert_eq!(reason(&with("AA\u{85}PL")), Reason::BadSymbol);
    assert_eq!(classify(&with("7203.T\u{a0}株")).unwrap().symbol, "7203.T\u{a0}株");
    // Escaped symbols are decoded, not kept verbatim.
    let escaped = r#"{"s":"A\u0041PL","p":1,"t":1763997374633,"v":1}"#;
    assert_eq!(classify(escaped).unwrap().symbol, "AAPL");
}

#[test]
fn price_rules() {
    let with = |p: &str| format!(r#"{{"s":"A","p":{p},"t":1763997374633,"v":1}}"#);
    for bad in ["0", "-1.5", "0.0", "-0.0"] {
        assert_eq!(reason(&with(bad)), Reason::BadPrice, "{bad}");
    }
    for good in ["0.0001", "1", "90000.12", "1e3"] {
        assert!(classify(&with(good)).is_ok(), "{good}");
    }
    // Out-of-range numbers are rejected by the JSON parser itself.
    assert_eq!(reason(&with("1e400")), Reason::MalformedJson);
}

#[test]
fn volume_rules() {
    let with = |v: &str| format!(r#"{{"s":"A","p":1,"t":1763997374633,"v":{v}}}"#);
    assert_eq!(reason(&with("-1")), Reason::BadVolume);
    assert_eq!(reason(&with("-0.001")), Reason::BadVolume);
    assert_eq!(classify(&with("0")).unwrap().volume, 0.0);
    assert_eq!(classify(&with("0.00012")).unwrap().volume, 0.00012);
}

#[test]
fn timestamp_rules() {
    let with = |t: &str| format!(r#"{{"s":"A","p":1,"t":{t},"v":1}}"#);
    for bad in [
        "1763997374",    // seconds, not milliseconds
        "946684799999",  // just before 2000-01-01
        "4102444800000", // 2100-01-01 itself
        "-5",
        "1763997374633.5",      // not an integer
        "18446744073709551615", // u64::MAX
    ] {
        assert_eq!(reason(&with(bad)), Reason::BadTimestamp, "{bad}");
    }
    assert_eq!(classify(&with("946684800000")).unwrap().ts, MIN_TS_MS);
    assert_eq!(classify(&with("4102444799999")).unwrap().ts, MAX_TS_MS - 1);
}

#[test]
fn conditions_rules() {
    let with = |c: &str| format!(r#"{{"s":"A","p":1,"t":1763997374633,"v":1{c}}}"#);
    assert_eq!(classify(&with("")).unwrap().conditions, None);
    assert_eq!(classify(&with(r#","c":null"#)).unwrap().conditions, None);
    assert_eq!(classify(&with(r#","c":[]"#)).unwrap().conditions, Some(Conditions::new()));
    for bad in [r#","c":"1""#, r#","c":[1]"#, r#","c":["1",[2]]"#, r#","c":{}"#] {
        assert_eq!(reason(&with(bad)), Reason::BadConditions, "{bad}");
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let json = r#"{"x":{"deep":[1,2,{"a":null}]},"s":"A","p":1,"t":1763997374633,"v":1,"type":"x"}"#;
    assert!(classify(json).is_ok());
}

#[test]
fn first_failing_rule_names_the_reason() {
    // Missing beats bad types; type checks run before value checks.
    assert_eq!(reason(r#"{"s":"","p":"x","t":1}"#), Reason::MissingField);
    assert_eq!(reason(r#"{"s":"","p":"x","t":1,"v":1}"#), Reason::BadType);
    assert_eq!(reason(r#"{"s":"","p":-1,"t":1,"v":-1}"#), Reason::BadSymbol);
    assert_eq!(reason(r#"{"s":"A","p":-1,"t":1,"v":-1}"#), Reason::BadPrice);
}

#[test]
fn deep_nesting_classifies_without_overflowing_the_stack() {
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let in_conditions = format!(r#"{{"s":"A","p":1,"t":1763997374633,"v":1,"c":{}}}"#, nest(20_000));
    assert_eq!(reason(&in_conditions), Reason::MalformedJson);
    // Under an unknown key the value is skipped; whatever the verdict, it must not panic.
    let unknown = format!(r#"{{"x":{},"s":"A","p":1,"t":1763997374633,"v":1}}"#, nest(20_000));
    let _ = classify(&unknown);
}

#[test]
fn quarantine_payload_is_bounded_and_utf8() {
    let long = "é".repeat(MAX_QUARANTINE_PAYLOAD);
    let kept = quarantine_payload(Some(long.as_bytes()));
    assert!(kept.len() <= MAX_QUARANTINE_PAYLOAD);
    assert!(long.starts_with(kept.trim_end_matches('\u{fffd}')));
    assert_eq!(quarantine_payload(Some(b"ab\xffc")), "ab\u{fffd}c");
    assert_eq!(quarantine_payload(None), "");
}

#[test]
fn reason_names_are_unique_snake_case() {
    let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Reason::ALL.len());
    assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_always_classify(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Must return (never panic); a clean verdict must satisfy the contract.
        if let Ok(t) = clean(Some(&bytes)) {
            prop_assert!(t.price > 0.0 && t.price.is_finite());
            prop_assert!(t.volume >= 0.0 && t.volume.is_finite());
            prop_assert!((MIN_TS_MS..MAX_TS_MS).contains(&t.ts));
            prop_assert!(!t.symbol.is_empty() && t.symbol.len() <= MAX_SYMBOL_BYTES);
        }
        let q = quarantine_payload(Some(&bytes));
        prop_assert!(q.len() <= MAX_QUARANTINE_PAYLOAD);
        if !bytes.is_empty() {
            prop_assert_eq!(clean(Some(&bytes)), classify_total(&bytes));
        }
    }

    /// The symbol rule's ASCII shortcut never disagrees with asking every character.
    #[test]
    fn symbol_rule_agrees_with_decoding_every_character(symbol in "\\PC{0,3}[\\x00-\\u{a0}]{0,3}\\PC{0,3}") {
        let decoded = !symbol.is_empty() && symbol.len() <= MAX_SYMBOL_BYTES && !symbol.chars().any(char::is_control);
        prop_assert_eq!(super::valid_symbol(&symbol), decoded, "{:?}", symbol);
    }

    #[test]
    fn mutated_trades_always_classify(
        cut in 0usize..GOOD.len(),
        byte in any::<u8>(),
        pos in 0usize..GOOD.len(),
    ) {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[pos] = byte;
        prop_assert_eq!(clean(Some(&bytes)), classify_total(&bytes));
        let truncated = &GOOD.as_bytes()[..cut];
        prop_assert!(clean(Some(truncated)).is_err());
    }

    #[test]
    fn generated_objects_match_the_contract(
        s in prop_oneof![Just(None), "[A-Z:]{0,70}".prop_map(Some)],
        p in prop_oneof![Just(None), (-10.0f64..1e6).prop_map(Some)],
        v in prop_oneof![Just(None), (-10.0f64..1e6).prop_map(Some)],
        t in prop_oneof![Just(None), (0i64..5_000_000_000_000).prop_map(Some)],
    ) {
        let mut obj = serde_json::Map::new();
        if let Some(s) = &s { obj.insert("s".into(), s.clone().into()); }
        if let Some(p) = p { obj.insert("p".into(), p.into()); }
        if let Some(v) = v { obj.insert("v".into(), v.into()); }
        if let Some(t) = t { obj.insert("t".into(), t.into()); }
        let json = serde_json::to_vec(&obj).unwrap();
        // An independent statement of the rules, in the order they are checked.
        let expected = match (&s, p, v, t) {
            (Some(s), Some(p), Some(v), Some(t)) => {
                if s.is_empty() || s.len() > MAX_SYMBOL_BYTES { Err(Reason::BadSymbol) }
                else if p <= 0.0 { Err(Reason::BadPrice) }
                else if v < 0.0 { Err(Reason::BadVolume) }
                else if !(MIN_TS_MS..MAX_TS_MS).contains(&t) { Err(Reason::BadTimestamp) }
                else { Ok((s.clone(), p, v, t)) }
            }
            _ => Err(Reason::MissingField),
        };
        let got = clean(Some(&json)).map(|c| (c.symbol.to_string(), c.price, c.volume, c.ts));
        prop_assert_eq!(got, expected);
    }
}

/// JSON text for one field value: every type the rules tell apart, and the edge cases of each.
fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("{}".to_owned()),
        Just(r#"{"a":[1,{"b":2}]}"#.to_owned()),
        Just("[]".to_owned()),
        Just(r#"["1","12"]"#.to_owned()),
        Just(r#"["1",2]"#.to_owned()),
        Just(r#"["\u0041"]"#.to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e400".to_owned()),
        Just("1763997374633.5".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        (MIN_TS_MS - 5..MAX_TS_MS + 5).prop_map(|i| i.to_string()),
        (-1e3f64..1e6).prop_map(|f| format!("{f:?}")),
        "[A-Z:]{0,3}".prop_map(|s| format!("{s:?}")),
        Just(r#""A\u0042C""#.to_owned()),
        Just(r#""A\nB""#.to_owned()),
        Just(format!("{:?}", "X".repeat(70))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The typed fast path of `clean` never disagrees with the total classifier: same trade,
    /// or same reason, whatever the field types, order, duplicates and surrounding bytes.
    #[test]
    fn fast_path_agrees_with_the_total_classifier(
        fields in proptest::collection::vec(
            (prop_oneof![Just("s"), Just("p"), Just("v"), Just("t"), Just("c"), Just("x")], any_value()),
            0..8,
        ),
        leading in prop_oneof![Just(""), Just(" "), Just("[")],
        trailing in prop_oneof![Just(""), Just(" "), Just("]"), Just("x")],
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        let json = format!("{leading}{{{}}}{trailing}", body.join(","));
        prop_assert_eq!(clean(Some(json.as_bytes())), classify_total(json.as_bytes()), "{}", json);
    }
}

#[test]
fn the_scanner_reads_the_usual_shape_and_declines_the_rest() {
    let read = |json: &str| scan::trade(json.as_bytes()).map(|f| (f.s.to_owned(), f.p, f.v, f.t, f.c.is_some()));
    let usual = Some(("AAPL".to_owned(), 189.31, 40.0, 1_763_997_374_633, true));
    assert_eq!(read(GOOD), usual);
    assert_eq!(
        read(" {\"c\" : [ \"1\" , \"12\" ] ,\"v\":40, \"t\":1763997374633,\"p\":189.31,\n\"s\":\"AAPL\"}\t"),
        usual
    );
    assert_eq!(read(r#"{"s":"AAPL","p":189.31,"t":1763997374633,"v":40}"#).map(|f| f.4), Some(false));
    assert_eq!(read(r#"{"s":"AAPL","p":189.31,"t":1763997374633,"v":40,"c":null}"#).map(|f| f.4), Some(false));
    for declined in [
        r#"{"s":"A\u0041","p":1,"t":1763997374633,"v":1}"#,
        r#"{"s":"AAPL","p":1,"t":1763997374633,"v":1,"x":0}"#,
        r#"{"s":"AAPL","p":1,"t":1763997374633,"v":1,"s":"B"}"#,
        r#"{"s":"AAPL","p":1,"t":1763997374633}"#,
        r#"{"s":"AAPL","p":1,"t":1763997374633.0,"v":1}"#,
        r#"{"s":"AAPL","p":1,"t":-1,"v":1}"#,
        r#"{"s":"AAPL","p":01,"t":1763997374633,"v":1}"#,
        r#"{"s":"AAPL","p":1e400,"t":1763997374633,"v":1}"#,
        r#"{"s":"AAPL","p":1,"t":1763997374633,"v":1}x"#,
        r#"{"s":"AAPL","p":"1","t":1763997374633,"v":1}"#,
    ] {
        assert!(read(declined).is_none(), "scanned {declined}");
    }
}

/// JSON number text of every form the grammar allows, and some it does not: signs, leading
/// zeros, long mantissas, empty fractions and exponents, exponents beyond `f64`.
fn any_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop_oneof![Just(""), Just("-")],
            "[0-9]{0,24}",
            prop_oneof![Just(String::new()), "\\.[0-9]{0,24}"],
            prop_oneof![Just(String::new()), "[eE][+-]?[0-9]{0,4}"],
        )
            .prop_map(|(sign, int, frac, exp)| format!("{sign}{int}{frac}{exp}")),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        (0u64..1 << 60).prop_map(|m| format!("{}.{:0>6}", m / 1_000_000, m % 1_000_000)),
        any::<u64>().prop_map(|u| u.to_string()),
    ]
}

fn any_space() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(""), Just(" "), Just("\t"), Just("\n "), Just("\r")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Whatever the numbers and the whitespace, the scanner's verdict is the total
    /// classifier's: the same trade to the bit, or the same reason.
    #[test]
    fn the_scanner_agrees_with_the_total_classifier_on_numbers(
        p in any_number(),
        v in any_number(),
        t in prop_oneof![any_number(), (MIN_TS_MS - 5..MAX_TS_MS + 5).prop_map(|t| t.to_string())],
        order in Just([0usize, 1, 2, 3]).prop_shuffle(),
        space in proptest::collection::vec(any_space(), 8),
    ) {
        let fields = [r#""s":"AAPL""#.to_owned(), format!("\"p\":{p}"), format!("\"v\":{v}"), format!("\"t\":{t}")];
        let body: Vec<String> = order.iter().enumerate().map(|(i, &f)| format!("{}{}{}", space[i], fields[f], space[i + 4])).collect();
        let json = format!("{{{}}}", body.join(","));
        let (fast, total) = (clean(Some(json.as_bytes())), classify_total(json.as_bytes()));
        prop_assert_eq!(&fast, &total, "{}", json);
        if let (Ok(a), Ok(b)) = (&fast, &total) {
            // -0.0 == 0.0: the bits tell them apart.
            prop_assert_eq!((a.price.to_bits(), a.volume.to_bits()), (b.price.to_bits(), b.volume.to_bits()), "{}", json);
        }
    }
}

proptest! {
    /// The scanner's eight-digit steps read any run of digits as the plain loop does.
    #[test]
    fn digit_runs_read_as_one_at_a_time(digits in "[0-9]{1,19}", tail in "[^0-9]{0,3}") {
        let text = format!("{digits}{tail}");
        let mut reader = scan::Reader::new(text.as_bytes());
        let (value, count) = reader.digits(0);
        prop_assert_eq!(count, digits.len());
        prop_assert_eq!(value, digits.parse::<u64>().unwrap());
    }
}
