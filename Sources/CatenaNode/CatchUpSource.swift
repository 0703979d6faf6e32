import CatenaCatchUpWire
import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire

/// The source side of catch-up: answers one ``CatchUpRequest`` from a store's durable log.
///
/// It checks that the receiver's last record is one this log holds (same seq, same epoch), then
/// streams every durable record after it, in order, cut into chunks of at most the request's
/// ``CatchUpRequest/maxChunkBytes`` (a larger record travels alone), each LZ4-compressed if asked,
/// and ends with an empty chunk naming the log's durable end (``CatchUpChunk/end(carried:sourceEnd:)``).
/// When the receiver already has everything, it first waits up to the request's
/// ``CatchUpRequest/waitMilliseconds`` for new records (a long poll).
///
/// It holds one chunk at a time (plus the record stream's read-ahead of about 1 MiB) and awaits
/// `send` for each, so a slow receiver slows it down through the connection's backpressure. It
/// knows nothing of nodes or chains: the server that received the request passes the store and
/// a way to send frames.
public enum CatchUpSource {
    /// How often a long poll looks for new durable records.
    static let pollInterval = Duration.milliseconds(2)

    /// Answers `request` from `store`'s durable log; `send(chunk, more)` sends one reply frame
    /// (`more`: further frames follow). Returns after the last, empty chunk was sent.
    ///
    /// Refuses the request, before sending anything, with
    /// - `historyCompacted` if compaction dropped records after `request.after` (its seq is below
    ///   ``Store/compactedThrough``, also for `.zero` unless the request asks for a
    ///   ``CatchUpFlags/fullCopy``: then every record compaction kept is sent, seqs skipping what
    ///   it dropped);
    /// - `lsnOutOfOrder` if the receiver's last record is not in this log: its seq is beyond the
    ///   durable end, or this log's record at that seq has another epoch (the receiver holds
    ///   records the chain never committed and must truncate first).
    ///
    /// Also throws what reading the log throws (`corruption`, `checksumMismatch`) and what `send`
    /// throws; `closed` if the task is cancelled.
    public static func serve(
        _ request: CatchUpRequest, store: Store,
        send: (CatchUpChunk, _ more: Bool) async throws(CatenaError) -> Void
    ) async throws(CatenaError) {
        let request = request.bounded
        let codec: CatchUpCodec = request.flags.contains(.lz4) ? .lz4 : .raw
        let fullCopy = request.flags.contains(.fullCopy) && request.after == .zero
        var stream = try await openStream(after: request.after, store: store, fullCopy: fullCopy)
        var last = request.after
        var sent = 0
        var builder = ChunkBuilder(maxBytes: request.maxChunkBytes)
        let deadline = ContinuousClock.now + .milliseconds(request.waitMilliseconds)
        while true {
            while let record = try await stream.iterator.nextRecord() {
                if Task.isCancelled { throw CatenaError(.closed, "catch-up was cancelled") }
                guard fullCopy ? record.lsn.seq > last.seq : record.lsn.seq == last.seq + 1, record.lsn.epoch >= last.epoch else {
                    // The log changed under the stream (a truncation): let the receiver ask again.
                    throw CatenaError(.unavailable, "the log changed while it was read: \(record.lsn) does not follow \(last)")
                }
                if let full = builder.add(record) {
                    try await send(try CatchUpChunk(records: full, codec: codec), true)
                    sent += full.count
                }
                last = record.lsn
            }
            if let rest = builder.take() {
                try await send(try CatchUpChunk(records: rest, codec: codec), true)
                sent += rest.count
            }
            if sent > 0 { break }
            // The receiver has everything: wait for the durable end to move, until the deadline.
            guard try await waitForNewRecords(after: stream.end, store: store, until: deadline) else { break }
            stream = try await openStream(after: last, store: store, verified: true)
        }
        try await send(.end(carried: last, sourceEnd: store.highestLSN), false)
    }

    /// A record stream after `after` and the durable end it was opened at.
    struct OpenStream {
        var iterator: RecordStream.Iterator
        var end: LSN
    }

    /// Opens the log after `after`, first checking (unless `verified`) that the receiver's last
    /// record is in this log.
    static func openStream(after: LSN, store: Store, verified: Bool = false, fullCopy: Bool = false) async throws(CatenaError) -> OpenStream {
        let end = store.highestLSN
        let compacted = store.compactedThrough
        if verified || after == .zero && (compacted.seq == 0 || fullCopy) {
            return OpenStream(iterator: try store.records(after: after).makeAsyncIterator(), end: end)
        }
        guard after.seq >= compacted.seq else {
            throw CatenaError(.historyCompacted, "records after \(after) were compacted here (history kept after \(compacted)); a full copy is needed")
        }
        guard after.seq <= end.seq else {
            throw CatenaError(.lsnOutOfOrder, "the receiver's last record \(after) is beyond this log's durable end \(end); it holds records the chain never committed and must truncate first")
        }
        if after.seq == compacted.seq {
            // That record was compacted away here, but its LSN is known.
            guard after.epoch == compacted.epoch else {
                throw CatenaError(.lsnOutOfOrder, "this log's record at seq \(after.seq) is \(compacted), not \(after); the receiver must truncate first")
            }
            return OpenStream(iterator: try store.records(after: after).makeAsyncIterator(), end: end)
        }
        // Read from the record at `after.seq` on, and check it is the receiver's.
        let before = after.seq == 1 ? LSN.zero : LSN(epoch: after.epoch, seq: after.seq - 1)
        var iterator = try store.records(after: before).makeAsyncIterator()
        let found = try await iterator.nextRecord()
        guard let found, found.lsn == after else {
            let here = found.map { $0.lsn.seq == after.seq ? "is \($0.lsn)" : "is missing (next: \($0.lsn))" } ?? "is missing"
            throw CatenaError(.lsnOutOfOrder, "this log's record at seq \(after.seq) \(here), not \(after); the receiver must truncate first")
        }
        return OpenStream(iterator: iterator, end: end)
    }

    /// Waits until the store's durable end moves past `end`; false if `deadline` passed first.
    static func waitForNewRecords(after end: LSN, store: Store, until deadline: ContinuousClock.Instant) async throws(CatenaError) -> Bool {
        while store.highestLSN == end {
            guard ContinuousClock.now < deadline else { return false }
            do {
                try await Task.sleep(for: pollInterval)
            } catch {
                throw CatenaError(.closed, "catch-up was cancelled")
            }
        }
        return true
    }
}

/// Gathers records into chunks of at most `maxBytes` (a larger record makes a chunk of its own).
struct ChunkBuilder {
    let maxBytes: Int
    private var records: [EncodedRecord] = []
    private var bytes = 0

    init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// Adds `record`. When it does not fit with the records gathered so far, returns those (a full
    /// chunk) and starts the next chunk with `record`.
    mutating func add(_ record: EncodedRecord) -> [EncodedRecord]? {
        let full = !records.isEmpty && bytes + record.count > maxBytes ? take() : nil
        records.append(record)
        bytes += record.count
        return full
    }

    /// The records gathered so far, if any; the builder is empty afterwards.
    mutating func take() -> [EncodedRecord]? {
        guard !records.isEmpty else { return nil }
        defer {
            records = []
            bytes = 0
        }
        return records
    }
}

extension CatchUpSource {
    /// Answers the catch-up requests of one connection, one after the other, from `store` — for a
    /// server that does nothing else (a benchmark, a dedicated copy port); a node's server answers
    /// them among its other requests. Any other frame type ends the connection with
    /// `unknownFrameType`; a refused request gets an error reply and the connection goes on.
    public static func answer(_ connection: ServerConnection, _ reader: inout FrameReader, store: Store) async throws(CatenaError) {
        func write(_ frame: Frame) async throws(CatenaError) {
            do {
                try await connection.outbound.write(frame)
            } catch {
                throw CatenaError(.unavailable, "connection lost: \(error)")
            }
        }
        while let frame = try await reader.next() {
            guard frame.type == .catchUpRequest else {
                throw CatenaError(.unknownFrameType, "frame type \(frame.type.rawValue) is not a catch-up request")
            }
            do throws(CatenaError) {
                let request = try CatchUpRequest(decoding: frame.payload)
                try await serve(request, store: store) { (chunk, more) throws(CatenaError) in
                    try await write(Frame(type: .catchUpChunk, flags: more ? [.reply, .more] : .reply, chainID: frame.chainID,
                                          requestID: frame.requestID, payload: chunk.encoded()))
                }
            } catch {
                if error.code == .unavailable { throw error }
                try await write(Frame.error(error, replyingTo: frame.requestID, chainID: frame.chainID))
            }
        }
    }
}
