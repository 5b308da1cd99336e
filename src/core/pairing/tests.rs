use super::*;
use rand_core_06::OsRng;

#[test]
fn the_word_list_is_unambiguous() {
    for (i, w) in WORDS.iter().enumerate() {
        assert!(
            (3..=9).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()),
            "{w:?}: short, lowercase letters only"
        );
        for (j, o) in WORDS.iter().enumerate() {
            if i != j {
                assert!(!o.starts_with(w), "{w:?} starts {o:?}");
            }
        }
    }
}

#[test]
fn codes_round_trip_and_typing_is_forgiven() {
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let c = Code::random(&mut rng);
        assert!((1..=NAMEPLATES).contains(&c.nameplate));
        let s = c.to_string();
        assert_eq!(s.parse::<Code>(), Ok(c), "{s}");
        assert_eq!(
            s.to_uppercase().replace('-', " ").parse::<Code>(),
            Ok(c),
            "{s}"
        );
    }
    let c: Code = " 7-Guitar-orbit\n".parse().unwrap();
    assert_eq!(c.to_string(), "7-guitar-orbit");
    assert_eq!(c.session(), "punchraw-code-7");
}

#[test]
fn malformed_codes_say_what_is_wrong() {
    assert_eq!("guitar-orbit".parse::<Code>(), Err(CodeError::Shape));
    assert_eq!(
        "7-guitar-orbit-tiger".parse::<Code>(),
        Err(CodeError::Shape)
    );
    assert_eq!(
        "0-guitar-orbit".parse::<Code>(),
        Err(CodeError::Number("0".into()))
    );
    assert_eq!(
        "10000-guitar-orbit".parse::<Code>(),
        Err(CodeError::Number("10000".into()))
    );
    assert_eq!(
        "7-gitar-orbit".parse::<Code>(),
        Err(CodeError::Word("gitar".into()))
    );
}

/// The same code on both sides gives both the same key; the confirmations then match what
/// each expects of the other.
#[test]
fn the_same_code_agrees_on_a_key() {
    let code: Code = "7-guitar-orbit".parse().unwrap();
    let (a, ma) = Pake::start(&code, OsRng);
    let (b, mb) = Pake::start(&code, OsRng);
    let (ka, kb) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
    assert_eq!(ka, kb);
    assert_eq!(confirmation(&ka, "a"), confirmation(&kb, "a"));
    assert_ne!(
        confirmation(&ka, "a"),
        confirmation(&ka, "b"),
        "one per side"
    );
    assert_eq!(secret(&ka).len(), 64);
}

/// Another word, or the same words for another session number: different keys, so the
/// confirmations do not match (the guess fails, and it was the only one).
#[test]
fn a_wrong_code_gives_another_key() {
    let right: Code = "7-guitar-orbit".parse().unwrap();
    for wrong in ["7-guitar-tiger", "8-guitar-orbit", "7-orbit-guitar"] {
        let wrong: Code = wrong.parse().unwrap();
        let (a, ma) = Pake::start(&right, OsRng);
        let (b, mb) = Pake::start(&wrong, OsRng);
        let (ka, kb) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
        assert_ne!(ka, kb, "{wrong}");
        assert_ne!(confirmation(&ka, "b"), confirmation(&kb, "b"));
    }
}

#[test]
fn garbage_instead_of_a_message_is_an_error_not_a_panic() {
    let code: Code = "7-guitar-orbit".parse().unwrap();
    for junk in [&[][..], &[0u8; 5][..], &[0x41; 33][..], &[0xff; 200][..]] {
        let (a, _) = Pake::start(&code, OsRng);
        assert_eq!(a.finish(junk), Err(BadMessage), "{junk:?}");
    }
}
