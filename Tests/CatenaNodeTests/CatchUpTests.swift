import CatenaCatchUpWire
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Foundation
import NIOCore
import Synchronization
import Testing

// Catch-up: a receiver copies a source's log over 127.0.0.1 (CatchUpSource behind a FrameServer,
// CatchUpReceiver into a fresh store). The transfer tests run with the other in-process tests,
// one at a time; the payload tests need no network.

extension InProcessChainTests {
    @Suite("Catch-up transfer")
    struct CatchUpTransfer {
        @Test("copies sealed segments and the unsealed tail byte for byte; the index serves the same objects",
              .timeLimit(.minutes(1)), arguments: [true, false])
        func copiesTheWholeLog(compress: Bool) async throws {
            try await withCatchUpFixture { f in
                let end = try await appendHistory(to: f.source, count: 3000, seed: 1, epochs: [1, 2, 4])
                #expect(f.source.sealedSegments.count >= 10, "the log should span many sealed segments")
                #expect(f.source.segments.last?.sealed == false, "and end in an unsealed one")
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }
                let store = try await f.openStore("receiver")

                let progress = try await f.receiver(store, from: source, compress: compress).run(until: { $0.isCaughtUp })

                #expect(progress.lastLSN == end)
                #expect(progress.sourceEnd == end)
                #expect(progress.recordsInstalled == 3000)
                #expect(progress.chunksInstalled == source.log.chunks.count)
                #expect(progress.chunksInstalled > 10, "64 KiB chunks: many per copy")
                #expect(progress.chunksRefused == 0)
                #expect(source.log.chunks.allSatisfy { $0.codec == (compress ? .lz4 : .raw) })
                if compress {
                    #expect(progress.compressionRatio > 1.5, "the values are half text: LZ4 should shrink them")
                } else {
                    #expect(progress.compressionRatio < 1 && progress.compressionRatio > 0.95)
                }
                #expect(store.highestLSN == end)
                try await expectIdentical(f.source, store)
            }
        }

        @Test("follows records appended while it copies, over several requests", .timeLimit(.minutes(1)))
        func followsLiveWrites() async throws {
            try await withCatchUpFixture { f in
                _ = try await appendHistory(to: f.source, count: 1500, seed: 2, epochs: [1])
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }
                let store = try await f.openStore("receiver")
                let target = Locked<LSN?>(nil)
                let receiver = f.receiver(store, from: source)
                let copy = Task {
                    try await receiver.run(until: { progress in target.withLock { $0 }.map { progress.lastLSN == $0 } ?? false })
                }
                // Writes keep flowing while the receiver copies and then follows: each round once the
                // receiver holds the last (a fixed pause would let a slow machine copy them all at once).
                var last = LSN.zero
                for round in 0..<30 {
                    last = try await appendHistory(to: f.source, count: 20, seed: 100 + UInt64(round), epochs: [round < 15 ? 1 : 2])
                    let end = last
                    _ = try await eventually { store.highestLSN == end ? true : nil }
                }
                target.withLock { $0 = last }
                let progress = try await copy.value

                #expect(progress.lastLSN == last)
                #expect(progress.recordsInstalled == 1500 + 30 * 20)
                #expect(progress.rounds >= 2, "the receiver asked again as new records arrived")
                #expect(source.log.requests.count >= 3)
                try await expectIdentical(f.source, store)
            }
        }

        @Test("a connection cut mid-stream resumes from the last durable record; nothing is installed twice",
              .timeLimit(.minutes(1)))
        func resumesAfterACut() async throws {
            try await withCatchUpFixture { f in
                let end = try await appendHistory(to: f.source, count: 2000, seed: 3, epochs: [1, 3])
                let store = try await f.openStore("receiver")
                // The first connection is cut when it is about to send its sixth chunk, once the
                // receiver holds the first five.
                let source = try await CatchUpTestSource.start(store: f.source) { connection, index, chunk in
                    guard connection == 1 && index == 6 else { return .send(chunk) }
                    _ = try? await eventually { store.highestLSN.seq == chunk.firstLSN.seq - 1 ? true : nil }
                    return .cut
                }
                defer { source.stop() }

                let progress = try await f.receiver(store, from: source).run(until: { $0.isCaughtUp })

                #expect(progress.connections == 2)
                #expect(progress.retries == 1)
                #expect(progress.lastError?.code == .unavailable)
                let log = source.log
                #expect(log.requests.count >= 2)
                let firstConnection = log.chunks.filter { $0.connection == 1 }
                #expect(firstConnection.count == 5)
                // The second connection asked from the end of the first's last installed chunk, and
                // its first chunk starts right after it.
                let resumed = try #require(log.requests.first { $0.connection == 2 })
                #expect(resumed.after == firstConnection.last?.last)
                #expect(log.chunks.first { $0.connection == 2 }?.first.seq == resumed.after.seq + 1)
                #expect(progress.recordsInstalled == 2000)
                #expect(progress.recordsInstalled == log.chunks.reduce(0) { $0 + $1.records })
                #expect(store.highestLSN == end)
                try await expectIdentical(f.source, store)
            }
        }

        @Test("a damaged chunk is refused whole and the copy resumes cleanly after it", .timeLimit(.minutes(1)),
              arguments: [true, false])
        func refusesADamagedChunk(compress: Bool) async throws {
            try await withCatchUpFixture { f in
                let end = try await appendHistory(to: f.source, count: 1500, seed: 4, epochs: [2])
                // On the first connection, one byte in the middle of the fourth chunk's data is flipped:
                // inside the LZ4 frame's blocks, or inside a raw record. The frame checksum is computed
                // after the damage, so only the LZ4 or record checksums can catch it.
                let source = try await CatchUpTestSource.start(store: f.source) { connection, index, chunk in
                    guard connection == 1 && index == 4 else { return .send(chunk) }
                    var damaged = chunk
                    let at = damaged.data.readerIndex + damaged.data.readableBytes / 2
                    damaged.data.setInteger(damaged.data.getInteger(at: at, as: UInt8.self)! ^ 0x20, at: at)
                    return .send(damaged)
                }
                defer { source.stop() }
                let store = try await f.openStore("receiver")

                let progress = try await f.receiver(store, from: source, compress: compress).run(until: { $0.isCaughtUp })

                #expect(progress.chunksRefused == 1)
                #expect(progress.retries == 1)
                #expect(progress.lastError?.code == .checksumMismatch, "\(String(describing: progress.lastError))")
                let log = source.log
                let firstConnection = log.chunks.filter { $0.connection == 1 }
                #expect(firstConnection.count >= 4)
                // Nothing of the damaged chunk was installed: the receiver asked again from the end of
                // the chunk before it.
                let resumed = try #require(log.requests.first { $0.connection == 2 })
                #expect(resumed.after == firstConnection[2].last)
                #expect(progress.recordsInstalled == 1500)
                #expect(store.highestLSN == end)
                try await expectIdentical(f.source, store)
            }
        }

        @Test("a receiver whose last record has another epoch, or lies beyond the source's end, gets lsnOutOfOrder; truncated, it catches up",
              .timeLimit(.minutes(1)))
        func divergentHistoryIsRefused() async throws {
            try await withCatchUpFixture { f in
                let end = try await appendHistory(to: f.source, count: 400, seed: 5, epochs: [1, 2])
                let shared = try await f.source.records(after: .zero).collect().prefix(200)
                let lastShared = try #require(shared.last?.lsn)
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }

                // An old head's records the chain never committed: same seqs, an older epoch.
                let stale = try await f.openStore("stale")
                try await stale.append(Array(shared))
                let staleEnd = try await appendHistory(to: stale, count: 10, seed: 99, epochs: [1])
                #expect(staleEnd.seq == lastShared.seq + 10)
                await #expect { _ = try await f.receiver(stale, from: source).run(until: { $0.isCaughtUp }) } throws: {
                    code(of: $0) == .lsnOutOfOrder
                }
                #expect(stale.highestLSN == staleEnd, "nothing was installed")

                // Truncated to the last shared record, the same store catches up.
                try await stale.truncate(after: lastShared)
                let progress = try await f.receiver(stale, from: source).run(until: { $0.isCaughtUp })
                #expect(progress.lastLSN == end)
                try await expectIdentical(f.source, stale)

                // A receiver ahead of the source.
                let ahead = try await f.openStore("ahead")
                try await ahead.append(try await f.source.records(after: .zero).collect())
                _ = try await appendHistory(to: ahead, count: 3, seed: 98, epochs: [2])
                await #expect { _ = try await f.receiver(ahead, from: source).run(until: { $0.isCaughtUp }) } throws: {
                    code(of: $0) == .lsnOutOfOrder
                }
                // The source itself answers with the typed error, before sending anything.
                await #expect { try await CatchUpSource.serve(CatchUpRequest(after: LSN(epoch: 1, seq: lastShared.seq + 1)), store: f.source) { _, _ in
                    Issue.record("a chunk was sent")
                } } throws: { code(of: $0) == .lsnOutOfOrder }
            }
        }

        @Test("asking for history that compaction dropped gets historyCompacted", .timeLimit(.minutes(1)))
        func compactedHistoryIsRefused() async throws {
            try await withCatchUpFixture(segmentSize: 8192) { f in
                // Overwrites of few keys, so compaction has records to drop.
                for i in 1...300 {
                    let r = Record(type: .put, chainID: CatchUpFixture.chainID, key: try Key("k\(i % 7)"), lsn: LSN(epoch: 1, seq: UInt64(i)),
                                   value: [UInt8](repeating: UInt8(i % 251), count: 200))
                    try await f.source.append([try r.encoded()])
                }
                try await f.source.setCommitWatermark(LSN(epoch: 1, seq: 250))
                _ = try await f.source.compact()
                let compacted = f.source.compactedThrough
                #expect(compacted.seq > 10)
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }

                // An empty receiver: the compacted log is no contiguous history any more.
                let empty = try await f.openStore("empty")
                await #expect { _ = try await f.receiver(empty, from: source).run(until: { $0.isCaughtUp }) } throws: {
                    code(of: $0) == .historyCompacted
                }
                #expect(empty.highestLSN == .zero)
                // A receiver whose last record is below the compacted history.
                let behind = try await f.openStore("behind")
                for i in 1...5 {
                    let r = Record(type: .put, chainID: CatchUpFixture.chainID, key: try Key("k\(i % 7)"), lsn: LSN(epoch: 1, seq: UInt64(i)),
                                   value: [UInt8](repeating: UInt8(i % 251), count: 200))
                    try await behind.append([try r.encoded()])
                }
                await #expect { _ = try await f.receiver(behind, from: source).run(until: { $0.isCaughtUp }) } throws: {
                    code(of: $0) == .historyCompacted
                }
                await #expect { try await CatchUpSource.serve(CatchUpRequest(after: LSN(epoch: 1, seq: compacted.seq - 1)), store: f.source) { _, _ in
                    Issue.record("a chunk was sent")
                } } throws: { code(of: $0) == .historyCompacted }
                // From the compacted position itself (its LSN is known) and above, records still flow.
                var chunks: [CatchUpChunk] = []
                try await CatchUpSource.serve(CatchUpRequest(after: compacted), store: f.source) { chunk, _ in chunks.append(chunk) }
                #expect(chunks.first?.firstLSN.seq == compacted.seq + 1)
                #expect(chunks.last?.lastLSN == f.source.highestLSN)
            }
        }

        @Test("a full copy installs what compaction kept, records the compacted history, and continues contiguously", .timeLimit(.minutes(1)))
        func fullCopyOfACompactedLog() async throws {
            try await withCatchUpFixture(segmentSize: 8192) { f in
                func put(_ i: Int) throws -> EncodedRecord {
                    try Record(type: .put, chainID: CatchUpFixture.chainID, key: try Key("k\(i % 7)"), lsn: LSN(epoch: 1, seq: UInt64(i)),
                               value: [UInt8](repeating: UInt8(i % 251), count: 200)).encoded()
                }
                for i in 1...300 { try await f.source.append([try put(i)]) }
                try await f.source.setCommitWatermark(LSN(epoch: 1, seq: 250))
                _ = try await f.source.compact()
                #expect(f.source.compactedThrough.seq > 10)
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }

                let copy = try await f.openStore("full")
                var configuration = f.receiver(copy, from: source).configuration
                configuration.fullCopy = true
                _ = try await CatchUpReceiver(configuration: configuration, store: copy, logger: testLogger).run(until: { $0.isCaughtUp })
                let kept = try await f.source.records(after: .zero).collect().map(\.bytes)
                #expect(try await copy.records(after: .zero).collect().map(\.bytes) == kept, "the records compaction kept, byte for byte")
                #expect(try copy.list().objects == (try f.source.list().objects))
                #expect(copy.compactedThrough.seq > 0, "the copy knows its history is thinned")
                #expect(throws: CatenaError.self) { _ = try copy.records(after: LSN(epoch: 1, seq: 1)) }

                // Later records follow contiguously, without the full-copy flag.
                try await f.source.append([try put(301)])
                _ = try await f.receiver(copy, from: source).run(until: { $0.isCaughtUp })
                #expect(copy.highestLSN == LSN(epoch: 1, seq: 301))
                #expect(try await copy.records(after: .zero).collect().map(\.bytes) == (try await f.source.records(after: .zero).collect().map(\.bytes)))

                // The thinned log and its compacted history survive a restart.
                let compactedHere = copy.compactedThrough
                await copy.close()
                let reopened = try await f.openStore("full")
                #expect(reopened.highestLSN == LSN(epoch: 1, seq: 301))
                #expect(reopened.compactedThrough == compactedHere)
                #expect(reopened.damage.isEmpty, "gaps from compaction are not damage")
                #expect(try reopened.list().objects == (try f.source.list().objects))
            }
        }

        @Test("a full copy of a log whose completed multipart upload lost its creation to compaction installs it", .timeLimit(.minutes(1)))
        func fullCopyOfACompactedMultipartUpload() async throws {
            try await withCatchUpFixture(segmentSize: 8192) { f in
                let chain = CatchUpFixture.chainID
                let start: UInt64 = 1_700_000_000_000_000_000
                var seq: UInt64 = 0
                func record(_ type: RecordType, _ key: String, at t: UInt64, id: RequestID = .none, checksum: UInt64? = nil,
                            extensions: [RecordExtension] = [], value: [UInt8] = []) throws -> EncodedRecord {
                    seq += 1
                    return try Record(type: type, chainID: chain, key: try Key(key), lsn: LSN(epoch: 1, seq: seq), timestamp: t, requestID: id,
                                      contentChecksum: checksum, extensions: extensions, value: value).encoded()
                }
                let upload = RequestID(high: 7, low: 7), group = RequestID(high: 8, low: 8)
                let bytes = [UInt8](repeating: 9, count: 3000)
                try await f.source.append([try record(.uploadCreate, "video", at: start, id: upload)])
                for i in 0..<3 {
                    try await f.source.append([try record(.chunk, "video", at: start, extensions: [.chunkAddress(ChunkAddress(upload: group, index: UInt32(i)))],
                                                          value: Array(bytes[(i * 1000)..<((i + 1) * 1000)]))])
                }
                let part = ManifestPart(number: 1, group: group, chunkCount: 3, size: 3000, checksum: XXH3.hash(bytes))
                try await f.source.append([try record(.uploadPart, "video", at: start, checksum: part.checksum,
                                                      value: PartRecord(upload: upload, part: part).encoded())])
                try await f.source.append([try record(.manifest, "video", at: start, checksum: Manifest.checksum(ofParts: [part.summary]),
                                                      value: Manifest(upload: upload, parts: [part]).encoded())])
                // Two minutes later (past the request-id window), enough to seal the segments.
                for i in 0..<60 { try await f.source.append([try record(.put, "filler\(i % 3)", at: start + 120_000_000_000, value: [UInt8](repeating: 1, count: 500))]) }
                try await f.source.setCommitWatermark(f.source.highestLSN)
                _ = try await f.source.compact()
                let kept = try await f.source.records(after: .zero).collect()
                #expect(!kept.contains { $0.type == .uploadCreate || $0.type == .uploadPart }, "compaction dropped the upload's creation and part")
                #expect(kept.contains { $0.type == .manifest } && kept.filter { $0.type == .chunk }.count == 3)
                let source = try await CatchUpTestSource.start(store: f.source)
                defer { source.stop() }
                let copy = try await f.openStore("full")
                var configuration = f.receiver(copy, from: source).configuration
                configuration.fullCopy = true
                _ = try await CatchUpReceiver(configuration: configuration, store: copy, logger: testLogger).run(until: { $0.isCaughtUp })
                #expect(try await copy.records(after: .zero).collect().map(\.bytes) == kept.map(\.bytes))
                let object = try #require(try copy.get(try Key("video")))
                #expect(try await object.bytes() == bytes && object.info.parts == [part.summary])
            }
        }

        @Test("cancellation ends a run promptly: mid-stream, and while it waits to reconnect", .timeLimit(.minutes(1)))
        func cancellationIsPrompt() async throws {
            try await withCatchUpFixture { f in
                _ = try await appendHistory(to: f.source, count: 1000, seed: 6, epochs: [1])
                // The source stalls before its third chunk.
                let source = try await CatchUpTestSource.start(store: f.source) { _, index, chunk in
                    index == 3 ? .hold(.seconds(30), chunk) : .send(chunk)
                }
                defer { source.stop() }
                let store = try await f.openStore("receiver")
                let receiver = f.receiver(store, from: source)
                let copy = Task { try await receiver.run() }
                let secondEnd = try await eventually { source.log.chunks.count >= 2 ? source.log.chunks[1].last : nil }
                _ = try await eventually { store.highestLSN == secondEnd ? true : nil }
                try await Task.sleep(for: .milliseconds(50))
                let cancelled = ContinuousClock.now
                copy.cancel()
                let progress = try await copy.value
                // Well within the 30 s the source holds its chunk (a loaded one-core machine may be slow).
                #expect(ContinuousClock.now - cancelled < .seconds(5))
                #expect(progress.lastLSN == secondEnd)
                #expect(store.highestLSN == secondEnd)

                // Nobody listens: the receiver retries with backoff until cancelled.
                let gone = try await CatchUpTestSource.start(store: f.source)
                await gone.stopAndWait()
                var configuration = CatchUpReceiver.Configuration(source: gone.address,
                                                                  clusterID: CatchUpFixture.clusterID, chainID: CatchUpFixture.chainID)
                configuration.initialBackoff = .milliseconds(20)
                let orphan = CatchUpReceiver(configuration: configuration, store: store, logger: testLogger)
                let retrying = Task { try await orphan.run() }
                try await Task.sleep(for: .milliseconds(300))
                let start = ContinuousClock.now
                retrying.cancel()
                let idle = try await retrying.value
                #expect(ContinuousClock.now - start < .seconds(5))
                #expect(idle.lastError?.code == .unavailable)
                #expect(idle.recordsInstalled == 0)
            }
        }

        @Test("a node answers catch-up requests: a receiver copies a running chain's tail", .timeLimit(.minutes(1)))
        func copiesFromANode() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                for i in 0..<60 {
                    _ = try await cluster.client.put("catch-up/\(i)", pseudoRandomBytes(1000 + 97 * i, seed: UInt64(i)))
                }
                try await cluster.client.delete("catch-up/7")
                let tail = cluster.tail.localStore
                var sc = StoreConfiguration(directory: cluster.directory + "/joiner", clusterID: TestCluster.clusterID, nodeID: "joiner")
                sc.durability = .none
                let store = try await Store.open(sc, logger: testLogger)
                let configuration = CatchUpReceiver.Configuration(source: cluster.tail.address, clusterID: TestCluster.clusterID,
                                                                  chainID: try #require(cluster.tail.chainConfiguration?.chainID))
                let progress = try await CatchUpReceiver(configuration: configuration, store: store, logger: testLogger)
                    .run(until: { $0.isCaughtUp })
                #expect(progress.lastLSN == tail.highestLSN)
                #expect(progress.recordsInstalled >= 61)
                try await expectIdentical(tail, store)
                // A receiver for another chain is refused for good.
                var wrongChain = configuration
                wrongChain.chainID = configuration.chainID + 1
                await #expect { _ = try await CatchUpReceiver(configuration: wrongChain, store: store, logger: testLogger).run() } throws: {
                    code(of: $0) == .invalidArgument
                }
                await store.close()
            }
        }
    }
}

@Suite("Catch-up payloads")
struct CatchUpPayloadTests {
    static let requests: [CatchUpRequest] = [
        CatchUpRequest(after: .zero),
        CatchUpRequest(after: LSN(epoch: 3, seq: 12345), flags: [], maxChunkBytes: 64 << 10, waitMilliseconds: 1000),
        CatchUpRequest(after: LSN(epoch: .max, seq: .max), flags: CatchUpFlags(rawValue: 0xFF), maxChunkBytes: Int(UInt32.max), waitMilliseconds: 0),
    ]

    static func sampleRecords(_ count: Int = 5, from seq: UInt64 = 11, epoch: UInt64 = 2, chain: ChainID = CatchUpFixture.chainID) -> [EncodedRecord] {
        (0..<count).map { i in
            let value = Array("value \(i) ".utf8) + [UInt8](repeating: UInt8(i), count: 40 * i)
            return try! Record(type: i == 2 ? .delete : .put, chainID: chain, key: try! Key("key/\(i)"),
                               lsn: LSN(epoch: epoch, seq: seq + UInt64(i)), timestamp: 1000 + UInt64(i),
                               requestID: RequestID(high: 1, low: UInt64(i)), value: i == 2 ? [] : value).encoded()
        }
    }

    static func sampleChunks() throws -> [CatchUpChunk] {
        [try CatchUpChunk(records: sampleRecords(), codec: .lz4), try CatchUpChunk(records: sampleRecords(), codec: .raw),
         try CatchUpChunk(records: Array(sampleRecords().prefix(1)), codec: .lz4),
         CatchUpChunk.end(carried: LSN(epoch: 2, seq: 15), sourceEnd: LSN(epoch: 3, seq: 99))]
    }

    @Test("requests round trip; every strict prefix is malformed; trailing bytes are ignored; sources bound them")
    func requestCodec() throws {
        for request in Self.requests {
            let payload = request.encoded()
            #expect(try CatchUpRequest(decoding: payload) == request)
            for n in 0..<payload.readableBytes {
                #expect(malformed { () throws(CatenaError) in try CatchUpRequest(decoding: payload.getSlice(at: 0, length: n)!) }, "prefix of \(n) bytes")
            }
            var extended = payload
            extended.writeBytes([1, 2, 3])
            #expect(try CatchUpRequest(decoding: extended) == request)
        }
        let wild = CatchUpRequest(after: .zero, maxChunkBytes: 1 << 30, waitMilliseconds: 60_000).bounded
        #expect(wild.maxChunkBytes == 8 << 20 && wild.waitMilliseconds == 1000)
        #expect(CatchUpRequest(after: .zero, maxChunkBytes: 10).bounded.maxChunkBytes == 64 << 10)
        #expect(CatchUpRequest(after: .zero).maxChunkBytes == 4 << 20)
    }

    @Test("chunks round trip, raw and LZ4; every strict prefix is malformed; trailing bytes are ignored")
    func chunkCodec() throws {
        for chunk in try Self.sampleChunks() {
            let payload = chunk.encoded()
            #expect(try CatchUpChunk(decoding: payload) == chunk)
            for n in 0..<payload.readableBytes {
                #expect(malformed { () throws(CatenaError) in try CatchUpChunk(decoding: payload.getSlice(at: 0, length: n)!) }, "prefix of \(n) bytes")
            }
            var extended = payload
            extended.writeBytes([0xFF, 0, 7])
            #expect(try CatchUpChunk(decoding: extended) == chunk)
        }
        // An unknown codec, and a raw chunk announcing another length than its data has.
        var unknown = try CatchUpChunk(records: Self.sampleRecords(), codec: .raw).encoded()
        unknown.setInteger(UInt8(9), at: 40)
        #expect(malformed { () throws(CatenaError) in try CatchUpChunk(decoding: unknown) })
        var short = try CatchUpChunk(records: Self.sampleRecords(), codec: .raw).encoded()
        short.setInteger(UInt32(7), at: 36, endianness: .little)
        #expect(malformed { () throws(CatenaError) in try CatchUpChunk(decoding: short) })
    }

    @Test("a chunk's records come back verified, raw and LZ4, and the LZ4 frame has both checksums", arguments: CatchUpCodec.allCases)
    func recordsRoundTrip(codec: CatchUpCodec) throws {
        let records = Self.sampleRecords()
        let chunk = try CatchUpChunk(decoding: try CatchUpChunk(records: records, codec: codec).encoded())
        #expect(chunk.firstLSN == records.first?.lsn && chunk.lastLSN == records.last?.lsn)
        #expect(chunk.recordCount == 5 && chunk.uncompressedLength == records.reduce(0) { $0 + $1.count })
        let decoded = try chunk.records(after: LSN(epoch: 1, seq: 10), chainID: CatchUpFixture.chainID, maxUncompressedLength: 1 << 20)
        #expect(decoded == records)
        if codec == .lz4 {
            let flg = chunk.data.getInteger(at: chunk.data.readerIndex + 4, as: UInt8.self)!
            #expect(flg & 0x14 == 0x14, "block and content checksums")
            #expect(chunk.data.readableBytes < chunk.uncompressedLength)
        }
    }

    @Test("a chunk that does not continue the log, or does not hold what it announces, is refused", arguments: CatchUpCodec.allCases)
    func inconsistentChunksAreRefused(codec: CatchUpCodec) throws {
        let records = Self.sampleRecords()
        let chunk = try CatchUpChunk(records: records, codec: codec)
        func refusal(_ c: CatchUpChunk, after: LSN = LSN(epoch: 1, seq: 10), chain: ChainID = CatchUpFixture.chainID,
                     limit: Int = 1 << 20) -> CatenaError.Code? {
            do {
                _ = try c.records(after: after, chainID: chain, maxUncompressedLength: limit)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(refusal(chunk) == nil)
        // Not the next seq, or an epoch going down.
        #expect(refusal(chunk, after: LSN(epoch: 1, seq: 9)) == .corruption)
        #expect(refusal(chunk, after: LSN(epoch: 1, seq: 11)) == .corruption)
        #expect(refusal(chunk, after: LSN(epoch: 3, seq: 10)) == .corruption)
        // Another chain's records.
        #expect(refusal(chunk, chain: 2) == .corruption)
        // Header fields that disagree with the records.
        var c = chunk
        c.recordCount = 4
        #expect(refusal(c) == .corruption)
        c = chunk
        c.recordCount = 6
        #expect(refusal(c) == .corruption)
        c = chunk
        c.lastLSN = LSN(epoch: 2, seq: 16)
        #expect(refusal(c) == .corruption)
        c = chunk
        c.firstLSN = LSN(epoch: 2, seq: 12)
        #expect(refusal(c) == .corruption)
        c = chunk
        c.recordCount = 0
        #expect(refusal(c) == .malformed)
        // An announced length above the receiver's limit is refused before decompressing.
        #expect(refusal(chunk, limit: chunk.uncompressedLength - 1) == .malformed)
        // One flipped byte anywhere in the data.
        var refusedEverywhere = true
        for at in stride(from: 0, to: chunk.data.readableBytes, by: 7) {
            var damaged = chunk
            let i = damaged.data.readerIndex + at
            damaged.data.setInteger(damaged.data.getInteger(at: i, as: UInt8.self)! ^ 0x01, at: i)
            if refusal(damaged) == nil { refusedEverywhere = false }
        }
        #expect(refusedEverywhere)
        // A record from another chunk spliced in (valid on its own, wrong place).
        if codec == .raw {
            var spliced = chunk
            var data = ByteBuffer()
            for (i, r) in records.enumerated() { data.writeBytes(i == 3 ? Self.sampleRecords(from: 20, epoch: 2)[0].bytes : r.bytes) }
            spliced.data = data
            spliced.uncompressedLength = data.readableBytes
            #expect(refusal(spliced) == .corruption)
        }
    }

    @Test("LZ4 data without block checksums, truncated, or with bytes after the frame is refused")
    func lz4FramesMustBeCompleteAndChecksummed() throws {
        let records = Self.sampleRecords()
        let joined = records.flatMap(\.bytes)
        var noBlockChecksums = try CatchUpChunk(records: records, codec: .lz4)
        noBlockChecksums.data = ByteBuffer(bytes: try LZ4Frame.compress(joined, contentChecksum: true, blockChecksum: false))
        #expect(throws: CatenaError.self) { try noBlockChecksums.records(after: LSN(epoch: 1, seq: 10), chainID: 1, maxUncompressedLength: 1 << 20) }
        var truncated = try CatchUpChunk(records: records, codec: .lz4)
        truncated.data = truncated.data.getSlice(at: truncated.data.readerIndex, length: truncated.data.readableBytes - 3)!
        #expect { try truncated.records(after: LSN(epoch: 1, seq: 10), chainID: 1, maxUncompressedLength: 1 << 20) } throws: {
            code(of: $0) == .corruption
        }
        var trailing = try CatchUpChunk(records: records, codec: .lz4)
        trailing.data.writeBytes([0])
        #expect { try trailing.records(after: LSN(epoch: 1, seq: 10), chainID: 1, maxUncompressedLength: 1 << 20) } throws: {
            code(of: $0) == .corruption
        }
    }

    @Test("LZ4 chunk data is a standard LZ4 frame, multi-block with stored blocks too; liblz4's frames are read back")
    func lz4ChunksAreStandardFrames() throws {
        // A 9 MiB record (three blocks: half random, so some are stored uncompressed) among small ones.
        var records = Self.sampleRecords(3)
        let big = pseudoRandomBytes(5 << 20, seed: 7) + [UInt8](repeating: 0x61, count: 4 << 20)
        records.append(try Record(type: .put, chainID: CatchUpFixture.chainID, key: try Key("big"), lsn: LSN(epoch: 2, seq: 14),
                                  value: big).encoded())
        records += Self.sampleRecords(2, from: 15)
        let joined = records.flatMap(\.bytes)
        let chunk = try CatchUpChunk(records: records, codec: .lz4)
        #expect(chunk.data.readableBytes < joined.count * 3 / 4)
        #expect(try LZ4Frame.decompress(Array(chunk.data.readableBytesView), maxSize: joined.count) == joined, "liblz4 reads it")
        #expect(try chunk.records(after: LSN(epoch: 1, seq: 10), chainID: CatchUpFixture.chainID, maxUncompressedLength: 16 << 20) == records)
        for blockSize in [LZ4FrameCompressor.BlockSize.max64KB, .max4MB] {
            var theirs = chunk
            theirs.data = ByteBuffer(bytes: try LZ4Frame.compress(joined, blockSize: blockSize, contentChecksum: true, blockChecksum: true))
            #expect(try theirs.records(after: LSN(epoch: 1, seq: 10), chainID: CatchUpFixture.chainID, maxUncompressedLength: 16 << 20) == records,
                    "a liblz4 frame with \(blockSize) blocks")
        }
        // Without a content checksum, liblz4's frame is refused.
        var unchecked = chunk
        unchecked.data = ByteBuffer(bytes: try LZ4Frame.compress(joined, contentChecksum: false, blockChecksum: true))
        #expect { try unchecked.records(after: LSN(epoch: 1, seq: 10), chainID: 1, maxUncompressedLength: 16 << 20) } throws: {
            code(of: $0) == .corruption
        }
    }

    @Test("the frame types are client requests with names")
    func frameTypes() {
        #expect(FrameType.catchUpRequest.rawValue == 24 && FrameType.catchUpChunk.rawValue == 25)
        #expect(FrameType.clientRequests.contains(.catchUpRequest))
        #expect(!FrameType.clientRequests.contains(.catchUpChunk))
        #expect(FrameType.catchUpRequest.description == "catchUpRequest" && FrameType.catchUpChunk.description == "catchUpChunk")
    }

    private func malformed<T>(_ body: () throws(CatenaError) -> T) -> Bool {
        do {
            _ = try body()
            return false
        } catch {
            return error.code == .malformed
        }
    }
}

// MARK: - Harness

/// A temporary directory with a source store (small segments, so a few thousand records span many
/// sealed ones) and any number of receiver stores; ``withCatchUpFixture(segmentSize:_:)`` closes
/// them all and removes the directory.
final class CatchUpFixture: Sendable {
    static let clusterID = "catch-up-tests"
    static let chainID: ChainID = 1

    let directory: String
    let source: Store
    private let stores = Mutex<[Store]>([])

    private init(directory: String, source: Store) {
        self.directory = directory
        self.source = source
        stores.withLock { $0.append(source) }
    }

    static func make(segmentSize: Int) async throws -> CatchUpFixture {
        let directory = NSTemporaryDirectory() + "catena-catch-up-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            var c = StoreConfiguration(directory: directory + "/source", clusterID: clusterID, nodeID: "source")
            c.segmentSize = segmentSize
            // The records here carry head timestamp 0: with a request-id window, compaction
            // (which some tests run on the source) would keep them all.
            c.requestWindow = .zero
            return CatchUpFixture(directory: directory, source: try await Store.open(c, logger: testLogger))
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// A new, empty store in the fixture's directory.
    func openStore(_ name: String) async throws -> Store {
        var c = StoreConfiguration(directory: directory + "/" + name, clusterID: Self.clusterID, nodeID: name)
        c.segmentSize = 256 << 10
        let store = try await Store.open(c, logger: testLogger)
        stores.withLock { $0.append(store) }
        return store
    }

    /// A receiver into `store` from `source`, with small chunks, a short long poll and a short backoff.
    func receiver(_ store: Store, from source: CatchUpTestSource, compress: Bool = true) -> CatchUpReceiver {
        var c = CatchUpReceiver.Configuration(source: source.address, clusterID: Self.clusterID, chainID: Self.chainID)
        c.compress = compress
        c.maxChunkBytes = 64 << 10
        c.wait = .milliseconds(50)
        c.initialBackoff = .milliseconds(10)
        c.name = "test-receiver"
        return CatchUpReceiver(configuration: c, store: store, logger: testLogger)
    }

    func close() async {
        for store in stores.withLock({ $0 }) { await store.close() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

func withCatchUpFixture<R>(segmentSize: Int = 64 << 10, _ body: (CatchUpFixture) async throws -> R) async throws -> R {
    let fixture = try await CatchUpFixture.make(segmentSize: segmentSize)
    do {
        let result = try await body(fixture)
        await fixture.close()
        return result
    } catch {
        await fixture.close()
        throw error
    }
}

/// A catch-up source on 127.0.0.1: a ``FrameServer`` that answers catch-up requests with
/// ``CatchUpSource``, passing every chunk of records through `behavior` (which may damage it, hold
/// it, or cut the connection instead of sending it), and logs requests and chunks sent.
final class CatchUpTestSource: Sendable {
    /// What to do with a chunk of records.
    enum Step: Sendable {
        case send(CatchUpChunk)
        /// Wait, then send.
        case hold(Duration, CatchUpChunk)
        /// Close the connection instead.
        case cut
    }

    struct Log: Sendable {
        struct Request: Sendable {
            var connection: Int
            var after: LSN
        }
        struct Chunk: Sendable {
            var connection: Int
            var first: LSN
            var last: LSN
            var records: Int
            var codec: CatchUpCodec
        }
        var connections = 0
        var requests: [Request] = []
        var chunks: [Chunk] = []
    }

    let address: Address
    private let server: FrameServer
    private let task: Task<Void, Never>
    private let state: Locked<Log>

    private init(server: FrameServer, task: Task<Void, Never>, state: Locked<Log>) {
        self.server = server
        self.task = task
        self.address = Address(host: "127.0.0.1", port: UInt16(server.port))
        self.state = state
    }

    var log: Log { state.withLock { $0 } }

    /// Starts serving `store`. `behavior(connection, index, chunk)`: connections count from 1, chunks
    /// of records from 1 on each connection.
    static func start(store: Store,
                      behavior: @escaping @Sendable (_ connection: Int, _ index: Int, CatchUpChunk) async -> Step = { _, _, chunk in .send(chunk) })
        async throws -> CatchUpTestSource {
        let server = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: CatchUpFixture.clusterID, localID: "source",
                                                acceptedRoles: [.client], logger: testLogger)
        let state = Locked(Log())
        let task = Task {
            await server.run { (connection, reader) throws(CatenaError) in
                let number = state.withLock { log in
                    log.connections += 1
                    return log.connections
                }
                func write(_ frame: Frame) async throws(CatenaError) {
                    do {
                        try await connection.outbound.write(frame)
                    } catch {
                        throw CatenaError(.unavailable, "connection lost: \(error)")
                    }
                }
                var index = 0
                while let frame = try await reader.next() {
                    guard frame.type == .catchUpRequest else { throw CatenaError(.unknownFrameType, "not a catch-up request") }
                    let request = try CatchUpRequest(decoding: frame.payload)
                    state.withLock { $0.requests.append(Log.Request(connection: number, after: request.after)) }
                    var cut = false
                    do throws(CatenaError) {
                        try await CatchUpSource.serve(request, store: store) { (chunk, more) throws(CatenaError) in
                            var chunk = chunk
                            if chunk.recordCount > 0 {
                                index += 1
                                switch await behavior(number, index, chunk) {
                                case .send(let c):
                                    chunk = c
                                case .hold(let pause, let c):
                                    try? await Task.sleep(for: pause)
                                    chunk = c
                                case .cut:
                                    cut = true
                                    throw CatenaError(.unavailable, "cut by the test")
                                }
                                state.withLock {
                                    $0.chunks.append(Log.Chunk(connection: number, first: chunk.firstLSN, last: chunk.lastLSN,
                                                               records: chunk.recordCount, codec: chunk.codec))
                                }
                            }
                            try await write(Frame(type: .catchUpChunk, flags: more ? [.reply, .more] : .reply, requestID: frame.requestID,
                                                  payload: chunk.encoded()))
                        }
                    } catch {
                        if cut || error.code == .unavailable { throw error }
                        try await write(Frame.error(error, replyingTo: frame.requestID))
                    }
                }
            }
        }
        return CatchUpTestSource(server: server, task: task, state: state)
    }

    /// Stops accepting and ends open connections (without waiting).
    func stop() {
        server.close()
        task.cancel()
    }

    /// Stops, and returns once the server has closed its socket.
    func stopAndWait() async {
        stop()
        await task.value
    }
}

/// Appends a deterministic mix of records after `store`'s end, `count` in all, spread evenly over
/// `epochs`: puts of 40 B ... 6 KiB under 600 keys (so keys are overwritten), half of them text
/// (compressible) and half random bytes, a delete every 13th record, and a chunked upload (three
/// chunks and a manifest) every 250th. Returns the last LSN.
@discardableResult
func appendHistory(to store: Store, count: Int, seed: UInt64, epochs: [UInt64]) async throws -> LSN {
    var rng = SplitMix64(seed: seed)
    var seq = store.lastEnqueuedLSN.seq
    var records: [EncodedRecord] = []
    var written = 0
    func next(_ i: Int) -> LSN {
        seq += 1
        return LSN(epoch: epochs[min(epochs.count - 1, i * epochs.count / count)], seq: seq)
    }
    while written < count {
        let i = written
        let key = try Key("obj/\(Int.random(in: 0..<600, using: &rng))")
        if i % 250 == 249 && count - written >= 4 {
            let upload = RequestID(high: seed, low: UInt64(i))
            let pieces = (0..<3).map { p in pseudoRandomBytes(3000 + 500 * p, seed: seed &* 31 &+ UInt64(i * 3 + p)) }
            for (p, piece) in pieces.enumerated() {
                var r = Record(type: .chunk, chainID: CatchUpFixture.chainID, key: key, lsn: next(written), value: piece)
                r.chunkAddress = ChunkAddress(upload: upload, index: UInt32(p))
                records.append(try r.encoded())
                written += 1
            }
            let whole = pieces.flatMap { $0 }
            let manifest = Record(type: .manifest, chainID: CatchUpFixture.chainID, key: key, lsn: next(written),
                                  contentChecksum: XXH3.hash(whole),
                                  value: Manifest(upload: upload, chunkCount: 3, totalSize: UInt64(whole.count)).encoded())
            records.append(try manifest.encoded())
            written += 1
        } else if i % 13 == 12 {
            records.append(try Record(type: .delete, chainID: CatchUpFixture.chainID, key: key, lsn: next(i)).encoded())
            written += 1
        } else {
            let size = Int.random(in: 40...6000, using: &rng)
            let value: [UInt8] = i % 2 == 0
                ? Array(String(repeating: "record \(i) of the catch-up test, ", count: size / 30 + 1).utf8.prefix(size))
                : pseudoRandomBytes(size, seed: rng.next())
            var r = Record(type: .put, chainID: CatchUpFixture.chainID, key: key, lsn: next(i), timestamp: UInt64(i),
                           requestID: RequestID(high: seed, low: UInt64(i)), value: value)
            if i % 5 == 0 { r.contentType = "text/plain" }
            records.append(try r.encoded())
            written += 1
        }
        if records.count >= 20 || written >= count {
            try await store.append(records)
            records = []
        }
    }
    return store.highestLSN
}

/// Both stores hold the same log, byte for byte, and their indexes list the same objects with the
/// same contents.
func expectIdentical(_ a: Store, _ b: Store, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let left = try await a.records(after: .zero).collect()
    let right = try await b.records(after: .zero).collect()
    #expect(left.count == right.count, sourceLocation: sourceLocation)
    #expect(left.map(\.bytes) == right.map(\.bytes), "the logs differ", sourceLocation: sourceLocation)
    let objects = try everyObject(a)
    #expect(objects == (try everyObject(b)), "the indexes differ", sourceLocation: sourceLocation)
    #expect(!objects.isEmpty, sourceLocation: sourceLocation)
    for info in objects {
        let mine = try await a.get(info.key)?.bytes()
        let theirs = try await b.get(info.key)?.bytes()
        #expect(mine != nil && mine == theirs, "\(info.key)", sourceLocation: sourceLocation)
    }
}

/// Every live object of `store`, in key order.
func everyObject(_ store: Store) throws -> [ObjectInfo] {
    var out: [ObjectInfo] = []
    var after: Key?
    repeat {
        let page = try store.list(after: after, limit: 100)
        out += page.objects
        after = page.nextCursor
    } while after != nil
    return out
}

/// Polls `probe` every 5 ms until it returns a value; fails after 20 s.
func eventually<T>(_ probe: () -> T?) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(20)
    while true {
        if let value = probe() { return value }
        guard ContinuousClock.now < deadline else { throw HarnessError(description: "condition not met in time") }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// A value behind a lock, shared by reference (a `Mutex` cannot be captured by escaping closures).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        mutex = Mutex(value)
    }

    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R {
        mutex.withLock { body(&$0) }
    }
}

@Suite("Catch-up pacing")
struct CatchUpPacingTests {
    @Test func withoutARateNothingWaits() {
        var pacer = CatchUpReceiver.Pacer(rate: nil, for: .seconds(60))
        #expect(pacer.pause(after: 1 << 30) == nil)
    }

    @Test func aChunkBeyondTheCreditWaitsForItsShareOfTheRate() {
        var pacer = CatchUpReceiver.Pacer(rate: 100_000_000, for: .seconds(60))
        // One second of credit to start with: 50 MB pass, the next 100 MB wait about half a second.
        #expect(pacer.pause(after: 50_000_000) == nil)
        let pause = pacer.pause(after: 100_000_000) ?? .zero
        #expect(pause > .milliseconds(400) && pause <= .milliseconds(500), "\(pause)")
    }

    @Test func theBoundExpiresSoACopyCanCatchUp() {
        var pacer = CatchUpReceiver.Pacer(rate: 1, for: .zero)
        #expect(pacer.pause(after: 1 << 20) == nil)
        #expect(pacer.expired)
    }
}
