//! Vocabularies.
//!
//! [`VOCAB`] is the closed set of words that signs, document titles and chart titles show: the classes of
//! the "which word is written" probe. They are short (2–6 letters) common sign words, so that at 64–112 px
//! a word can be drawn large enough to read. [`FILLER`] is the running text of document paragraphs; its
//! words carry no label.

/// The closed vocabulary of sign / title words (class id = index).
pub const VOCAB: [&str; 48] = [
    "OPEN", "CLOSED", "EXIT", "STOP", "SALE", "HOTEL", "CAFE", "PARK", "BANK", "TAXI", "BUS",
    "FOOD", "PIZZA", "BOOKS", "SHOP", "BAR", "GAS", "MUSIC", "SHOES", "FRESH", "HOT", "COLD",
    "FREE", "NEW", "PUSH", "PULL", "WAIT", "WALK", "SLOW", "NORTH", "SOUTH", "EAST", "WEST",
    "LEFT", "RIGHT", "ENTER", "POLICE", "MUSEUM", "CINEMA", "GARDEN", "BEACH", "TRAIN", "HELP",
    "INFO", "TOYS", "BREAD", "FISH", "WINE",
];

/// Lower-case running-text words for document paragraphs (no labels attached).
pub const FILLER: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "data", "model", "image",
    "table", "report", "value", "results", "method", "system", "figure", "page", "section",
    "number", "total", "market", "price", "water", "light", "city", "world", "school", "study",
    "group", "paper", "source", "order", "local", "public", "general", "during", "between",
    "under", "after", "before", "first", "second", "new", "large", "small", "high", "low", "early",
    "late", "common", "simple", "clear", "visual", "learning", "scale", "training", "language",
    "free", "vision", "text", "chart", "document", "word", "line", "color", "shape", "point",
    "area", "level", "rate", "growth", "year", "month", "week", "day", "time", "people",
];

/// Index of a vocabulary word, if it is one.
pub fn vocab_index(word: &str) -> Option<usize> {
    VOCAB.iter().position(|w| *w == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_are_unique_and_short() {
        let mut v = VOCAB.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), VOCAB.len(), "duplicate vocabulary word");
        assert!(
            VOCAB
                .iter()
                .all(|w| (2..=6).contains(&w.len()) && w.chars().all(|c| c.is_ascii_uppercase()))
        );
        let mut f = FILLER.to_vec();
        f.sort();
        f.dedup();
        assert_eq!(f.len(), FILLER.len(), "duplicate filler word");
        assert_eq!(vocab_index("STOP"), Some(3));
        assert_eq!(vocab_index("stop"), None);
    }
}
