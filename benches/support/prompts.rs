//! Prompt generators shared by the HTTP load bench and the in-process hit-path bench: seeded
//! support questions, their paraphrases, and unrelated prompts.

pub const TOPICS: &[&str] = &[
    "reset my password",
    "change my billing address",
    "cancel my subscription",
    "export my data",
    "enable two factor authentication",
    "delete my account",
    "update my email address",
    "download my invoices",
    "contact customer support",
    "upgrade my plan",
];
const GREETINGS: &[&str] = &[
    "",
    "Hi, ",
    "Hello, ",
    "Quick question: ",
    "Hey there, ",
    "Sorry to bother you, ",
    "Good morning, ",
];
const OPENERS: &[&str] = &[
    "how can I",
    "what is the way to",
    "can you tell me how to",
    "please help me",
    "I want to",
    "tell me how I can",
];
const CONTEXTS: &[&str] = &[
    "",
    " for my account",
    " for my team",
    " for my company",
    " on my laptop",
    " this week",
];
const CLOSERS: &[&str] = &[
    "?",
    " please?",
    " quickly?",
    " today?",
    " on the website?",
    " from my phone?",
    " right now?",
    " myself?",
];

/// The `i`-th paraphrase of a seeded prompt (distinct for i < 20,160; the runs of one
/// invocation draw consecutive ones, so the embedding LRU never sees a repeat).
pub fn paraphrase(i: usize) -> String {
    let t = TOPICS[i % TOPICS.len()];
    let i = i / TOPICS.len();
    let o = OPENERS[i % OPENERS.len()];
    let i = i / OPENERS.len();
    let c = CLOSERS[i % CLOSERS.len()];
    let i = i / CLOSERS.len();
    let g = GREETINGS[i % GREETINGS.len()];
    let x = CONTEXTS[(i / GREETINGS.len()) % CONTEXTS.len()];
    format!("{g}{o} {t}{x}{c}")
}

/// The `i`-th unrelated prompt: never close to anything seeded or to each other's answers.
pub fn unrelated(run: usize, i: usize) -> String {
    const ANIMALS: &[&str] = &["cat", "otter", "heron", "fox", "badger", "gecko", "lynx"];
    const THINGS: &[&str] = &[
        "lighthouse",
        "violin",
        "glacier",
        "teapot",
        "comet",
        "orchard",
    ];
    format!(
        "Write a limerick about a {} {} and a {} (draft {run}-{i})",
        ["purple", "tiny", "sleepy", "brave", "silver"][i % 5],
        ANIMALS[(i / 5) % ANIMALS.len()],
        THINGS[(i / 35) % THINGS.len()]
    )
}
