//! The marketplace: a listing moves the tokens offered into its escrow (a `#list` transaction,
//! the listing's id its sequence number); a purchase is one commit of two transactions on the
//! same issuer's ledgers, the tokens' `#sale` to the buyer and the price's `#pay` (the royalty to
//! the token class's receiver, the rest to the seller), each naming the other: all or nothing.
//! The price class must be a fungible class of the same issuer, so that one signed commit holds
//! the whole exchange.

use serde_json::{Value, json};
use ues_protocol::node::NodeError;

use super::ledger::{self, Class, Kind};
use super::{Asset, TX, amount, class_not_found, ledger_error, read, split_ledger, store, submit, submit_all};

fn price_class(app: &Asset, token_ledger: &str, price_ledger: &str) -> Result<(), NodeError> {
    let (issuer, _) = split_ledger(token_ledger)?;
    let (price_issuer, _) = split_ledger(price_ledger)?;
    if price_issuer != issuer {
        return Err(NodeError::bad(
            "PriceClassElsewhere",
            "the price is paid in a class of the same issuer, so that one commit holds the sale",
        ));
    }
    if price_ledger == token_ledger {
        return Err(NodeError::invalid("a class is not sold for itself"));
    }
    let row = read(app.node(), |c| store::ledger(c, price_ledger))?.ok_or_else(|| class_not_found(price_ledger))?;
    let class = Class::from_record(&issuer, &row.class).map_err(ledger_error)?;
    if class.kind != Kind::Fungible {
        return Err(NodeError::invalid("the price class is a fungible class"));
    }
    Ok(())
}

/// Offers tokens for sale (`createListing`): the answer names the listing.
pub(super) fn create_listing(
    app: &Asset,
    uri: &str,
    actor: &str,
    body: &Value,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let price_ledger = body["priceLedger"].as_str().ok_or_else(|| NodeError::invalid("priceLedger is required"))?;
    price_class(app, uri, price_ledger)?;
    let mut op = json!({
        "$type": format!("{TX}#list"),
        "seller": body.get("seller").and_then(Value::as_str).unwrap_or(actor),
        "priceLedger": price_ledger,
        "price": body["price"],
    });
    for k in ["tokenId", "amount"] {
        if let Some(v) = body.get(k) {
            op[k] = v.clone();
        }
    }
    let mut v = submit_all(
        app,
        &[uri.to_string()],
        actor,
        Box::new(move |seqs| {
            op["listingId"] = Value::String(seqs[0].to_string());
            Ok(vec![op])
        }),
        nonce,
    )?;
    v["listingId"] = Value::String(v["seq"].to_string());
    Ok(v)
}

/// Withdraws a listing (`cancelListing`).
pub(super) fn cancel_listing(
    app: &Asset,
    uri: &str,
    actor: &str,
    body: &Value,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let op = json!({ "$type": format!("{TX}#delist"), "listingId": body["listingId"] });
    submit(app, uri, actor, &op, nonce)
}

/// Buys a listing (`buyListing`): one commit, the tokens to the buyer and the price paid.
pub(super) fn buy_listing(
    app: &Asset,
    uri: &str,
    actor: &str,
    body: &Value,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let node = app.node();
    let id = body["listingId"].as_str().ok_or_else(|| NodeError::invalid("listingId is required"))?.to_string();
    let (issuer, _) = split_ledger(uri)?;
    let row = read(node, |c| store::ledger(c, uri))?.ok_or_else(|| class_not_found(uri))?;
    let class = Class::from_record(&issuer, &row.class).map_err(ledger_error)?;
    let listing = read(node, |c| {
        use ledger::Entries as _;
        Ok(store::Stored { conn: c, ledger: uri }.get(&ledger::key::listing(&id)))
    })?
    .map_err(ledger_error)?;
    let Some(listing) = listing.map(|b| ledger::Listing::decode(&b)).transpose().map_err(ledger_error)? else {
        // A repeated purchase (same nonce) of a listing now closed answers the first result.
        if let Some(n) = nonce
            && read(node, |c| store::by_nonce(c, uri, actor, n))?.is_some()
        {
            return submit_all(app, &[uri.to_string()], actor, Box::new(|_| Ok(vec![])), nonce);
        }
        return Err(NodeError::bad("ListingClosed", format!("listing {id} is not open")));
    };
    if let Some(max) = body.get("maxPrice").and_then(Value::as_str) {
        let max = amount::parse(max).map_err(|e| NodeError::bad("InvalidAmount", e))?;
        if listing.price > max {
            return Err(NodeError::bad("PriceChanged", format!("the price is {}, above {max}", listing.price)));
        }
    }
    price_class(app, uri, &listing.price_ledger)?;
    let (_, price_rkey) = split_ledger(&listing.price_ledger)?;
    let (royalty, cut) = match &class.royalty {
        Some(r) => {
            let cut = amount::royalty(listing.price, r.bps);
            (Some(json!({ "receiver": r.receiver, "amount": cut.to_string() })), cut)
        }
        None => (None, 0),
    };
    let token_rkey = row.rkey.clone();
    let seller = listing.seller.clone();
    let price = listing.price;
    let buyer = actor.to_string();
    let issuer2 = issuer.clone();
    let mut v = submit_all(
        app,
        &[uri.to_string(), listing.price_ledger.clone()],
        actor,
        Box::new(move |seqs| {
            let sale_uri = format!("at://{issuer2}/{TX}/{}", store::tx_rkey(&token_rkey, seqs[0]));
            let pay_uri = format!("at://{issuer2}/{TX}/{}", store::tx_rkey(&price_rkey, seqs[1]));
            let sale = json!({ "$type": format!("{TX}#sale"), "listingId": id, "buyer": buyer, "payment": pay_uri });
            let mut pay = json!({
                "$type": format!("{TX}#pay"), "from": buyer, "to": seller, "amount": price.to_string(), "sale": sale_uri,
            });
            if let Some(r) = royalty {
                pay["royalty"] = r;
            }
            Ok(vec![sale, pay])
        }),
        nonce,
    )?;
    v["price"] = Value::String(price.to_string());
    v["royalty"] = Value::String(cut.to_string());
    v["sellerGets"] = Value::String((price - cut).to_string());
    Ok(v)
}
