//! NRI's connection multiplexer (containerd/nri `pkg/net/multiplex`): two byte streams over the
//! one socket to the runtime, each frame an 8-byte header (the connection id, then the payload's
//! length, both big-endian) and its payload. Connection 1 carries the plugin service (the
//! runtime calls the plugin), connection 2 the runtime service (the plugin calls the runtime).

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::mpsc;

pub const PLUGIN_SERVICE: u32 = 1;
pub const RUNTIME_SERVICE: u32 = 2;

/// What the runtime's multiplexer accepts in one frame.
const MAX_PAYLOAD: usize = 1 << 24;
/// What this side sends in one frame. The runtime's ttrpc reads each connection through a
/// 4 KiB buffer, and its multiplexer refuses (ENOMEM) a frame larger than the read it serves.
const MAX_FRAME_SENT: usize = 4096;

/// The connections `ids` over `trunk`: a stream for each, and the task that carries their
/// frames; it ends (with the trunk's error, or `Ok` at its end) when the trunk closes, and the
/// streams then see their end too.
pub fn multiplex<T>(
    trunk: T,
    ids: &[u32],
) -> (Vec<DuplexStream>, tokio::task::JoinHandle<io::Result<()>>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut trunk_in, trunk_out) = tokio::io::split(trunk);
    let (frames, outgoing) = mpsc::channel::<(u32, Vec<u8>)>(64);
    let mut theirs = Vec::with_capacity(ids.len());
    let mut writers: HashMap<u32, WriteHalf<DuplexStream>> = HashMap::new();
    let mut pumps = Vec::new();
    for &id in ids {
        let (ours, other_end) = tokio::io::duplex(64 * 1024);
        theirs.push(other_end);
        let (mut reader, writer) = tokio::io::split(ours);
        writers.insert(id, writer);
        let frames = frames.clone();
        pumps.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; MAX_FRAME_SENT];
            loop {
                let n = reader.read(&mut buffer).await?;
                if n == 0 || frames.send((id, buffer[..n].to_vec())).await.is_err() {
                    return io::Result::Ok(());
                }
            }
        }));
    }
    drop(frames);
    let sender = tokio::spawn(send_frames(trunk_out, outgoing));
    let task = tokio::spawn(async move {
        let received = receive_frames(&mut trunk_in, &mut writers).await;
        // The trunk is gone: every connection ends, and so does everything sending on them.
        for (_, mut writer) in writers.drain() {
            let _ = writer.shutdown().await;
        }
        for pump in pumps {
            pump.abort();
        }
        sender.abort();
        received
    });
    (theirs, task)
}

async fn receive_frames<R: AsyncRead + Unpin>(
    trunk: &mut R,
    writers: &mut HashMap<u32, WriteHalf<DuplexStream>>,
) -> io::Result<()> {
    let mut header = [0u8; 8];
    loop {
        match trunk.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (id, length) = parse_header(&header);
        if length > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the runtime sent a frame of {length} bytes on connection {id}"),
            ));
        }
        let mut payload = vec![0u8; length];
        trunk.read_exact(&mut payload).await?;
        // A frame for a connection this side did not open is dropped, as the runtime does.
        if let Some(writer) = writers.get_mut(&id) {
            writer.write_all(&payload).await?;
        }
    }
}

async fn send_frames<W: AsyncWrite + Unpin>(
    mut trunk: W,
    mut outgoing: mpsc::Receiver<(u32, Vec<u8>)>,
) -> io::Result<()> {
    while let Some((id, payload)) = outgoing.recv().await {
        trunk.write_all(&frame_header(id, payload.len())).await?;
        trunk.write_all(&payload).await?;
        trunk.flush().await?;
    }
    Ok(())
}

fn frame_header(id: u32, length: usize) -> [u8; 8] {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&id.to_be_bytes());
    // Never more than MAX_FRAME_SENT.
    header[4..].copy_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    header
}

fn parse_header(header: &[u8; 8]) -> (u32, usize) {
    let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (id, length as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn headers_are_big_endian_id_then_length() {
        assert_eq!(frame_header(2, 0x0102), [0, 0, 0, 2, 0, 0, 1, 2]);
        assert_eq!(parse_header(&[0, 0, 0, 1, 0, 1, 0, 0]), (1, 65536));
    }

    #[test]
    fn frames_are_routed_by_connection_and_sent_in_small_pieces() {
        runtime().block_on(async {
            let (plugin_side, mut runtime_side) = tokio::io::duplex(1 << 20);
            let (mut streams, task) = multiplex(plugin_side, &[PLUGIN_SERVICE, RUNTIME_SERVICE]);
            let mut runtime_conn = streams.pop().unwrap();
            let mut plugin_conn = streams.pop().unwrap();

            // The runtime's frames: one for each connection, one for a connection not open.
            let mut incoming = Vec::new();
            for (id, payload) in [(1u32, &b"to plugin"[..]), (7, b"lost"), (2, b"to runtime")] {
                incoming.extend(frame_header(id, payload.len()));
                incoming.extend(payload);
            }
            runtime_side.write_all(&incoming).await.unwrap();
            let mut got = [0u8; 9];
            plugin_conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"to plugin");
            let mut got = [0u8; 10];
            runtime_conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"to runtime");

            // A long message goes out in frames the runtime's reader takes.
            let message = vec![7u8; 10_000];
            runtime_conn.write_all(&message).await.unwrap();
            let mut sent = Vec::new();
            while sent.len() < message.len() {
                let mut header = [0u8; 8];
                runtime_side.read_exact(&mut header).await.unwrap();
                let (id, length) = parse_header(&header);
                assert_eq!(id, RUNTIME_SERVICE);
                assert!(length > 0 && length <= MAX_FRAME_SENT, "{length}");
                let mut payload = vec![0u8; length];
                runtime_side.read_exact(&mut payload).await.unwrap();
                sent.extend(payload);
            }
            assert_eq!(sent, message);

            // The runtime goes: both connections end.
            drop(runtime_side);
            task.await.unwrap().unwrap();
            let mut rest = Vec::new();
            plugin_conn.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
    }

    #[test]
    fn an_oversized_frame_ends_the_trunk() {
        runtime().block_on(async {
            let (plugin_side, mut runtime_side) = tokio::io::duplex(1024);
            let (_streams, task) = multiplex(plugin_side, &[PLUGIN_SERVICE]);
            runtime_side
                .write_all(&frame_header(1, MAX_PAYLOAD + 1))
                .await
                .unwrap();
            let error = task.await.unwrap().unwrap_err();
            assert!(
                error.to_string().contains("bytes on connection 1"),
                "{error}"
            );
        });
    }
}
