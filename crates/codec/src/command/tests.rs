//! Command parsing and encoding.

use super::*;
use std::num::NonZeroU64;

fn parse(s: &str) -> Result<Command, CommandError> {
    Command::parse(s.as_bytes())
}

#[test]
fn basic_commands() {
    assert_eq!(
        parse("EHLO client.example\r\n"),
        Ok(Command::Ehlo("client.example".into()))
    );
    assert_eq!(parse("helo x\r\n"), Ok(Command::Helo("x".into())));
    assert_eq!(parse("DATA\r\n"), Ok(Command::Data));
    assert_eq!(parse("quit\n"), Ok(Command::Quit));
    assert_eq!(parse("NOOP hello\r\n"), Ok(Command::Noop));
    assert_eq!(parse("STARTTLS\r\n"), Ok(Command::StartTls));
    assert_eq!(
        parse("AUTH plain dGVzdAB0ZXN0AHRlc3Q=\r\n"),
        Ok(Command::Auth {
            mechanism: "PLAIN".into(),
            initial: Some("dGVzdAB0ZXN0AHRlc3Q=".into())
        })
    );
}

#[test]
fn mail_parameters() {
    let cmd = parse("MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n").unwrap();
    assert_eq!(
        cmd,
        Command::Mail(MailFrom {
            address: "a@b.example".into(),
            size: NonZeroU64::new(1234),
            body: Some(Body::EightBitMime),
            smtputf8: true,
            params: Vec::new(),
        })
    );
    assert_eq!(
        parse("MAIL FROM:<>\r\n"),
        Ok(Command::Mail(MailFrom::default()))
    );
    // A domain-less reverse-path is kept as the client wrote it, never turned into `<>`:
    // `<postmaster>` goes on, any other is refused as it would be at RCPT.
    assert_eq!(parse("MAIL FROM:<bob>\r\n"), Err(CommandError::BadAddress));
    for path in ["postmaster", "PostMaster"] {
        assert_eq!(
            parse(&format!("MAIL FROM:<{path}>\r\n")),
            Ok(Command::Mail(MailFrom {
                address: path.into(),
                ..MailFrom::default()
            }))
        );
    }
    let mut wire = BytesMut::new();
    Command::Mail(MailFrom {
        address: "postmaster".into(),
        ..MailFrom::default()
    })
    .encode(&mut wire);
    assert_eq!(&wire[..], b"MAIL FROM:<postmaster>\r\n");
    // DSN, AUTH= and BINARYMIME are read and kept as sent; what they need is known.
    let Ok(Command::Mail(mail)) =
        parse("MAIL FROM:<a@b> RET=FULL ENVID=x+2By AUTH=<> BODY=BINARYMIME\r\n")
    else {
        panic!("MAIL with parameters")
    };
    assert_eq!(mail.body, Some(Body::BinaryMime));
    assert_eq!(mail.params.len(), 3);
    assert_eq!(mail.needs().to_string(), "DSN CHUNKING BINARYMIME");
    let mut wire = BytesMut::new();
    Command::Mail(mail).encode(&mut wire);
    assert_eq!(
        &wire[..],
        b"MAIL FROM:<a@b> BODY=BINARYMIME RET=FULL ENVID=x+2By AUTH=<>\r\n"
    );
    let Ok(Command::Rcpt(rcpt)) =
        parse("RCPT TO:<\"a b\"@c.example> NOTIFY=FAILURE ORCPT=rfc822;a+20b@c.example\r\n")
    else {
        panic!("RCPT with parameters")
    };
    assert_eq!(rcpt.address, "a b@c.example");
    assert_eq!(rcpt.needs().to_string(), "DSN");
    assert_eq!(
        parse("MAIL FROM:<a@b> X-FOO=1\r\n"),
        Err(CommandError::UnsupportedParameter("X-FOO".into()))
    );
    assert_eq!(
        parse("MAIL FROM:<a@b> ENVID=é\r\n"),
        Err(CommandError::NeedsSmtpUtf8)
    );
}

#[test]
fn hostile_lines() {
    assert_eq!(parse("MAIL FROM:<a\0@b>\r\n"), Err(CommandError::Nul));
    assert_eq!(parse("MA\0IL FROM:<a@b>\r\n"), Err(CommandError::Nul));
    assert_eq!(parse("MAİL FROM:<a@b>\r\n"), Err(CommandError::BadVerb));
    assert_eq!(
        Command::parse(b"MAIL FROM:<\xff@b>\r\n"),
        Err(CommandError::InvalidUtf8)
    );
    assert_eq!(
        parse("MAIL FROM:<ü@b.example>\r\n"),
        Err(CommandError::NeedsSmtpUtf8)
    );
    assert_eq!(parse("RCPT TO:<a@b>\rRSET\r\n"), Err(CommandError::BareCr));
    assert_eq!(parse("FOO bar\r\n"), Err(CommandError::Unknown));
    assert!(matches!(
        parse("MAIL TO:<a@b>\r\n"),
        Err(CommandError::Syntax(_))
    ));
}

#[test]
fn quoted_local_parts_are_quoted_again() {
    let cmd = parse("RCPT TO:<\"a@b c\\\"d\"@example.com>\r\n").unwrap();
    let mut buf = BytesMut::new();
    cmd.encode(&mut buf);
    assert_eq!(&buf[..], b"RCPT TO:<\"a@b c\\\"d\"@example.com>\r\n");
    assert_eq!(Command::parse(&buf), Ok(cmd));
}

#[test]
fn encode_parse_round_trip() {
    for cmd in [
        Command::Ehlo("a.example".into()),
        Command::Mail(MailFrom {
            address: "x@y.example".into(),
            size: NonZeroU64::new(99),
            body: Some(Body::SevenBit),
            smtputf8: false,
            params: vec![Param::new("RET", Some("HDRS"))],
        }),
        Command::Rcpt(RcptTo {
            address: "r@y.example".into(),
            params: vec![Param::new("NOTIFY", Some("NEVER"))],
        }),
        Command::Rset,
        Command::Auth {
            mechanism: "LOGIN".into(),
            initial: None,
        },
    ] {
        let mut buf = BytesMut::new();
        cmd.encode(&mut buf);
        assert_eq!(Command::parse(&buf), Ok(cmd));
    }
}
