//! `#[derive(Shout)]` and `shout!("text")`, written against `proc_macro` only (no syn/quote).

use proc_macro::{Delimiter, Spacing, TokenStream, TokenTree};

/// Adds `NAME.shout()` (the type's name upper-cased) and `NAME::FIELDS` (its named fields).
#[proc_macro_derive(Shout)]
pub fn derive_shout(input: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    let Some(name) = tokens.windows(2).find_map(|w| match (&w[0], &w[1]) {
        (TokenTree::Ident(kw), TokenTree::Ident(name))
            if matches!(kw.to_string().as_str(), "struct" | "enum") =>
        {
            Some(name.to_string())
        }
        _ => None,
    }) else {
        return r#"compile_error!("Shout: expected a struct or an enum");"#
            .parse()
            .unwrap();
    };
    let fields = tokens
        .iter()
        .find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                Some(field_names(g.stream()))
            }
            _ => None,
        })
        .unwrap_or_default();
    let list: Vec<String> = fields.iter().map(|f| format!("{f:?}")).collect();
    format!(
        "impl {name} {{\n\
         pub const FIELDS: &'static [&'static str] = &[{}];\n\
         pub fn shout(&self) -> &'static str {{ {:?} }}\n\
         }}",
        list.join(", "),
        format!("{}!", name.to_uppercase()),
    )
    .parse()
    .unwrap()
}

/// An identifier directly followed by a lone `:` at the top level of a brace group is a field.
fn field_names(body: TokenStream) -> Vec<String> {
    let tokens: Vec<TokenTree> = body.into_iter().collect();
    tokens
        .windows(2)
        .filter_map(|w| match (&w[0], &w[1]) {
            (TokenTree::Ident(i), TokenTree::Punct(p))
                if p.as_char() == ':' && p.spacing() == Spacing::Alone =>
            {
                Some(i.to_string())
            }
            _ => None,
        })
        .collect()
}

/// `shout!("hello")` expands to the string literal `"HELLO!"` at compile time.
#[proc_macro]
pub fn shout(input: TokenStream) -> TokenStream {
    let mut iter = input.into_iter();
    match (iter.next(), iter.next()) {
        (Some(TokenTree::Literal(lit)), None) => {
            let text = lit.to_string();
            match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(inner) => format!("\"{}!\"", inner.to_uppercase()).parse().unwrap(),
                None => r#"compile_error!("shout!: expected a plain string literal")"#
                    .parse()
                    .unwrap(),
            }
        }
        _ => r#"compile_error!("shout!: expected one string literal")"#
            .parse()
            .unwrap(),
    }
}
