//! Pairing codes (issue 16), sans-IO: the short code one side reads out and the other types,
//! `N-word-word` (`7-guitar-orbit`), and the password-authenticated key exchange that turns
//! its words into a strong shared secret. The number names the rendezvous session the two
//! sides meet in; the words never leave either host: they are the password of SPAKE2 (the
//! symmetric variant, both sides alike), whose messages the rendezvous carries. A server, or
//! anyone watching, learns nothing that lets it test guesses offline; an active attacker
//! gets one guess per code, which makes the exchange fail ([`Pake::finish`] and the
//! confirmation, [`confirmation`]).
//!
//! Not wired into `connect` yet: the rendezvous messages and the command line come next.

use hmac::{Hmac, Mac};
use rand::Rng;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::fmt;
use std::str::FromStr;

/// The words of a code: 256 short, concrete, distinct nouns, none the start of another (so
/// a typed prefix is never another word), none a homophone of another.
pub const WORDS: [&str; 256] = [
    "acorn", "anchor", "apple", "arrow", "atlas", "avocado", "badge", "bagel", "bakery", "bamboo",
    "banjo", "barrel", "basket", "beacon", "beaver", "beetle", "bicycle", "biscuit", "blanket",
    "blossom", "bonnet", "bottle", "bracket", "brick", "bridge", "broom", "bucket", "buffalo",
    "button", "cabbage", "cabin", "cactus", "camera", "candle", "canoe", "canyon", "carpet",
    "carrot", "cashew", "castle", "cellar", "cherry", "chimney", "cider", "circus", "cobalt",
    "cobra", "comet", "compass", "cookie", "copper", "coral", "cotton", "cradle", "crater",
    "crayon", "cricket", "crystal", "cushion", "daisy", "desert", "diamond", "dolphin", "donkey",
    "dragon", "drum", "eagle", "easel", "ember", "engine", "falcon", "feather", "fern", "fiddle",
    "fig", "flute", "forest", "fossil", "fountain", "gadget", "garden", "garlic", "gazelle",
    "geyser", "ginger", "glacier", "glove", "goblet", "goose", "granite", "gravel", "guitar",
    "hammer", "harbor", "harp", "hazel", "hedgehog", "helmet", "hippo", "honey", "hornet",
    "iceberg", "igloo", "island", "ivory", "jacket", "jaguar", "jasmine", "jelly", "jester",
    "jigsaw", "jungle", "kayak", "kettle", "kitten", "kiwi", "koala", "ladder", "lagoon",
    "lantern", "lemon", "lentil", "lilac", "lizard", "llama", "lobster", "locket", "lotus",
    "magnet", "mammoth", "mango", "maple", "marble", "marsh", "meadow", "melon", "mirror",
    "mitten", "monkey", "moose", "mosaic", "muffin", "napkin", "nectar", "needle", "nickel",
    "noodle", "nutmeg", "oasis", "olive", "onion", "orbit", "orchid", "otter", "oyster", "paddle",
    "palace", "panda", "parrot", "parsnip", "peacock", "pebble", "pelican", "pencil", "penguin",
    "pepper", "piano", "pickle", "pillow", "pinecone", "pirate", "planet", "plum", "pocket",
    "pony", "poppy", "potato", "pretzel", "pumpkin", "puzzle", "quail", "quartz", "quill",
    "rabbit", "radish", "raven", "rhubarb", "ribbon", "river", "robot", "rocket", "ruby", "saddle",
    "salmon", "sandal", "sapphire", "saucer", "scarf", "scooter", "seagull", "sequoia", "shovel",
    "shrimp", "silver", "sleigh", "snail", "socket", "sparrow", "spider", "spinach", "sponge",
    "spruce", "squash", "squid", "statue", "summit", "sunset", "swan", "tablet", "tadpole",
    "teapot", "thimble", "thistle", "throne", "tiger", "timber", "tomato", "topaz", "tortoise",
    "toucan", "tractor", "trolley", "trumpet", "truffle", "tulip", "tunnel", "turnip", "turtle",
    "umbrella", "valley", "vase", "velvet", "violin", "volcano", "waffle", "wagon", "walnut",
    "walrus", "whale", "whistle", "willow", "window", "wizard", "yogurt", "zebra", "zipper",
];

/// The rendezvous secret of a pairing session: public, so the session key the server holds
/// says nothing (the code's words never reach the rendezvous key).
pub const RENDEZVOUS_SECRET: &[u8] = b"punchraw v1 pairing rendezvous";

/// Session numbers are drawn from 1 to this.
pub const NAMEPLATES: u16 = 9999;

/// A pairing code: the session number and the two password words (indices into [`WORDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The session number, 1 to [`NAMEPLATES`]. Not secret: it only names the rendezvous
    /// session the two sides meet in ([`Code::session`]).
    pub nameplate: u16,
    /// The two password words as indices into [`WORDS`]; secret, they never leave either host.
    pub words: [u8; 2],
}

/// Why a typed code is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not three parts (a number and two words) separated by dashes or blanks.
    #[error("a pairing code looks like 7-guitar-orbit: a number, then two words, joined by '-'")]
    Shape,
    /// The first part (given as typed) is not a session number from 1 to [`NAMEPLATES`].
    #[error("{0:?} is not a session number from 1 to {NAMEPLATES}")]
    Number(String),
    /// A word (given as typed) that is not in [`WORDS`].
    #[error("{0:?} is not a word of pairing codes; check the spelling the other side read out")]
    Word(String),
}

impl Code {
    /// A fresh code: `rng` must be a cryptographic one (the words are the password).
    pub fn random(rng: &mut impl Rng) -> Code {
        Code {
            nameplate: rng.random_range(1..=NAMEPLATES),
            words: [rng.random(), rng.random()],
        }
    }

    /// The rendezvous session the two sides meet in.
    pub fn session(&self) -> String {
        format!("punchraw-code-{}", self.nameplate)
    }

    /// The password of the exchange: the two words, as typed.
    fn password(&self) -> String {
        format!(
            "{}-{}",
            WORDS[usize::from(self.words[0])],
            WORDS[usize::from(self.words[1])]
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.password())
    }
}

impl FromStr for Code {
    type Err = CodeError;

    /// Case, surrounding blanks and blanks instead of dashes are forgiven: a code is read out
    /// and typed by people.
    fn from_str(s: &str) -> Result<Code, CodeError> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let [number, w1, w2] = parts[..] else {
            return Err(CodeError::Shape);
        };
        let nameplate = number
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=NAMEPLATES).contains(n))
            .ok_or_else(|| CodeError::Number(number.to_string()))?;
        let word = |w: &str| {
            WORDS
                .iter()
                .position(|x| *x == w)
                .map(|i| i as u8)
                .ok_or_else(|| CodeError::Word(w.to_string()))
        };
        Ok(Code {
            nameplate,
            words: [word(w1)?, word(w2)?],
        })
    }
}

/// Binds the exchange to this protocol and to the session: a message from another session
/// or another program's SPAKE2 never yields the same key.
fn identity(code: &Code) -> Identity {
    Identity::new(format!("punchraw v1 pairing\0{}", code.session()).as_bytes())
}

/// One side's half of the exchange.
pub struct Pake {
    state: Spake2<Ed25519Group>,
}

/// The peer's message was not a SPAKE2 message (not that the code was wrong: that shows
/// only in the confirmation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer's pairing message is malformed")]
pub struct BadMessage;

impl Pake {
    /// Starts the exchange; the message goes to the peer.
    pub fn start(
        code: &Code,
        rng: impl rand_core_06::CryptoRng + rand_core_06::RngCore,
    ) -> (Pake, Vec<u8>) {
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(code.password().as_bytes()),
            &identity(code),
            rng,
        );
        (Pake { state }, msg)
    }

    /// The shared key from the peer's message. Both sides get the same key only if both
    /// typed the same words; compare [`confirmation`]s before trusting it.
    pub fn finish(self, peer_msg: &[u8]) -> Result<[u8; 32], BadMessage> {
        let key = self.state.finish(peer_msg).map_err(|_| BadMessage)?;
        key.as_slice().try_into().map_err(|_| BadMessage)
    }
}

/// What side `id` shows the other to prove it holds `key`: HMAC-SHA256(key, label || id).
/// Different per side, so neither can echo the other's.
pub fn confirmation(key: &[u8; 32], id: &str) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"punchraw v1 pairing confirm\0");
    mac.update(id.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The secret the rest of `connect` uses once the confirmations matched: the key in hex.
pub fn secret(key: &[u8; 32]) -> String {
    crate::core::hex::encode(key)
}

#[cfg(test)]
mod tests;
