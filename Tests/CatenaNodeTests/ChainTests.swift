import CatenaClient
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

/// Every suite of this target nests in this one, so that no two in-process clusters ever run at
/// once (`.serialized` applies to nested suites too): the tests measure timing-sensitive things
/// like memory bounds, and the machine may have two cores.
@Suite("In-process chain", .serialized)
enum InProcessChainTests {}

extension InProcessChainTests {
    @Suite("Replication through a 3-node chain")
    struct Replication {
        @Test("put, get, head, list and delete round trips; reads off the tail are redirected", .timeLimit(.minutes(1)))
        func roundTrips() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                #expect(cluster.nodes.map(\.role) == [.head, .middle, .tail])

                let value = pseudoRandomBytes(5000, seed: 1)
                let receipt = try await client.put("t1/alpha", value, contentType: "application/octet-stream",
                                                   metadata: ["owner": "tests", "n": "1"])
                #expect(receipt.size == 5000)
                #expect(receipt.contentChecksum == XXH3.hash(value))

                let object = try await client.get("t1/alpha")
                #expect(object.bytes == value)
                #expect(object.info.lsn == receipt.lsn)
                #expect(object.info.contentType == "application/octet-stream")
                #expect(object.info.userMetadata == ["owner": "tests", "n": "1"])

                let info = try await client.head("t1/alpha")
                #expect(info.lsn == receipt.lsn)
                #expect(info.size == 5000)
                #expect(info.contentChecksum == receipt.contentChecksum)

                // An empty value and an overwrite.
                let empty = try await client.put("t1/empty", [])
                #expect(try await client.get("t1/empty").bytes == [])
                #expect(try await client.head("t1/empty").lsn == empty.lsn)
                let second = try await client.put("t1/alpha", Array("second".utf8))
                #expect(second.lsn > receipt.lsn)
                #expect(try await client.get("t1/alpha").bytes == Array("second".utf8))

                for k in ["t1/c", "t1/b", "t1/d", "t2/x"] { try await client.put(k, Array(k.utf8)) }
                let all = try await client.list(prefix: "t1/")
                #expect(all.objects.map(\.key.string) == ["t1/alpha", "t1/b", "t1/c", "t1/d", "t1/empty"])
                #expect(all.nextCursor == nil)
                let firstPage = try await client.list(prefix: "t1/", limit: 2)
                #expect(firstPage.objects.map(\.key.string) == ["t1/alpha", "t1/b"])
                let cursor = try #require(firstPage.nextCursor)
                let secondPage = try await client.list(prefix: "t1/", after: cursor, limit: 2)
                #expect(secondPage.objects.map(\.key.string) == ["t1/c", "t1/d"])

                let deleted = try await client.delete("t1/b")
                #expect(deleted > second.lsn)
                await #expect { _ = try await client.get("t1/b") } throws: { code(of: $0) == .notFound }
                await #expect { _ = try await client.head("t1/b") } throws: { code(of: $0) == .notFound }
                #expect(try await client.list(prefix: "t1/").objects.map(\.key.string) == ["t1/alpha", "t1/c", "t1/d", "t1/empty"])
                // Deleting again (a missing key) succeeds.
                try await client.delete("t1/b")

                // Keys are bytes: the NFC and NFD spellings of "café" are two keys.
                let nfc = "t3/caf\u{E9}", nfd = "t3/cafe\u{301}"
                #expect(nfc == nfd)  // as Swift Strings they are equal
                let nfcReceipt = try await client.put(nfc, Array("composed".utf8))
                let nfdReceipt = try await client.put(nfd, Array("decomposed".utf8))
                #expect(try await client.get(nfc).bytes == Array("composed".utf8))
                #expect(try await client.get(nfd).bytes == Array("decomposed".utf8))
                #expect(try await client.head(nfc).lsn == nfcReceipt.lsn)
                #expect(try await client.head(nfd).lsn == nfdReceipt.lsn)
                let spellings = try await client.list(prefix: "t3/").objects.map(\.key.bytes)
                #expect(spellings == [Array(nfd.utf8), Array(nfc.utf8)])  // byte order: "e" < "\u{E9}"
                try await client.delete(nfc)
                #expect(try await client.get(nfd).bytes == Array("decomposed".utf8))
                try await client.delete(nfd)

                await #expect { _ = try await client.get("never/written") } throws: { code(of: $0) == .notFound }
                await #expect { _ = try await client.head("never/written") } throws: { code(of: $0) == .notFound }
                await #expect { _ = try await client.getStreaming("never/written") } throws: { code(of: $0) == .notFound }

                // Reads sent straight to the head or the middle are redirected to the tail; the
                // tail itself answers.
                let epoch = await cluster.epoch
                let tail = cluster.tail
                let key = try Key("t1/alpha")
                for node in cluster.nodes.dropLast() {
                    let connection = try await cluster.rawConnection(to: node)
                    defer { connection.close() }
                    for type in [FrameType.get, .head] {
                        let error = await #expect(throws: CatenaError.self) {
                            _ = try await connection.request(Frame(type: type, epoch: epoch, payload: KeyPayload.encode(key)),
                                                             timeout: .seconds(5))
                        }
                        #expect(error?.code == .redirect)
                        #expect(error?.message.contains("\(tail.configuration.id)") == true)
                        #expect(error?.message.contains(tail.address.description) == true, "\(error?.message ?? "")")
                    }
                    let listError = await #expect(throws: CatenaError.self) {
                        _ = try await connection.request(Frame(type: .list, epoch: epoch, payload: ListRequest().encoded()),
                                                         timeout: .seconds(5))
                    }
                    #expect(listError?.code == .redirect)
                }
                // Writes sent to a non-head are redirected to the head.
                let middle = try await cluster.rawConnection(to: cluster.nodes[1])
                defer { middle.close() }
                let write = WriteRequest(requestID: .random(), type: .put, key: key, value: [1, 2, 3])
                let writeError = await #expect(throws: CatenaError.self) {
                    _ = try await middle.request(Frame(type: .write, epoch: epoch, payload: WritePayload.encode(write)), timeout: .seconds(5))
                }
                #expect(writeError?.code == .redirect)
                #expect(writeError?.message.contains(cluster.head.address.description) == true)

                let atTail = try await cluster.rawConnection(to: tail)
                defer { atTail.close() }
                let reply = try await atTail.request(Frame(type: .head, epoch: epoch, payload: KeyPayload.encode(key)), timeout: .seconds(5))
                #expect(reply.type == .objectInfo)
                #expect(try ObjectInfoPayload.decode(reply.payload).lsn == second.lsn)

                // Every replica holds the same objects.
                let contents = try cluster.nodes.map { try cluster.contents(of: $0) }
                #expect(contents[0].count == 5)
                for other in contents.dropFirst() { #expect(other == contents[0]) }
            }
        }

        @Test("concurrent writers on overlapping keys: replicas agree and each key holds its last acknowledged write",
              .timeLimit(.minutes(1)))
        func concurrentWriters() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let writers = 8, opsPerWriter = 200, keyCount = 20
                // Each writer reports (key, LSN, value or nil for a delete) of its acknowledged
                // writes, and what it read back right after some of them.
                typealias Ack = (key: String, lsn: LSN, value: [UInt8]?)
                typealias Read = (key: String, after: LSN, seen: (lsn: LSN, bytes: [UInt8])?)
                let (acks, reads): ([Ack], [Read]) = try await withThrowingTaskGroup(of: ([Ack], [Read]).self) { group in
                    for w in 0..<writers {
                        group.addTask {
                            var generator = SplitMix64(seed: 1000 + UInt64(w))
                            var mine: [Ack] = []
                            var seen: [Read] = []
                            for i in 0..<opsPerWriter {
                                let key = "cw/k\(Int(generator.next() % UInt64(keyCount)))"
                                if generator.next() % 10 == 0 {
                                    mine.append((key, try await client.delete(key), nil))
                                } else {
                                    let size = Int(generator.next() % 2048)
                                    let value = Array("w\(w)-\(i)-".utf8) + pseudoRandomBytes(size, seed: generator.next())
                                    mine.append((key, try await client.put(key, value).lsn, value))
                                }
                                if generator.next() % 4 == 0 {
                                    do {
                                        let object = try await client.get(key)
                                        seen.append((key, mine.last!.lsn, (object.info.lsn, object.bytes)))
                                    } catch let error as CatenaError where error.code == .notFound {
                                        seen.append((key, mine.last!.lsn, nil))
                                    }
                                }
                            }
                            return (mine, seen)
                        }
                    }
                    var all: ([Ack], [Read]) = ([], [])
                    for try await part in group {
                        all.0 += part.0
                        all.1 += part.1
                    }
                    return all
                }
                #expect(acks.count == writers * opsPerWriter)
                #expect(reads.count > 100)
                // Every acknowledged write got its own LSN.
                #expect(Set(acks.map(\.lsn)).count == acks.count)

                // A read after an acknowledged write sees that write or a later one, and only
                // what some acknowledged write wrote (every write of the run was acknowledged).
                var byLSN: [LSN: Ack] = [:]
                for ack in acks { byLSN[ack.lsn] = ack }
                for read in reads {
                    if let seen = read.seen {
                        let written = byLSN[seen.lsn]
                        #expect(seen.lsn >= read.after, "\(read.key): read \(seen.lsn) after writing \(read.after)")
                        #expect(written?.key == read.key && written?.value == seen.bytes, "\(read.key) at \(seen.lsn): a value no acknowledged write wrote")
                    } else {
                        let deletedSince = acks.contains { $0.key == read.key && $0.value == nil && $0.lsn >= read.after }
                        #expect(deletedSince, "\(read.key): not found after writing it at \(read.after), and no delete followed")
                    }
                }

                var last: [String: Ack] = [:]
                for ack in acks where last[ack.key].map({ $0.lsn < ack.lsn }) ?? true { last[ack.key] = ack }

                // Every replica holds identical data.
                let contents = try cluster.nodes.map { try cluster.contents(of: $0) }
                for (i, other) in contents.enumerated().dropFirst() {
                    #expect(Set(other.keys) == Set(contents[0].keys), "replica \(i + 1) has other keys")
                    for (key, info) in contents[0] {
                        let theirs = other[key]
                        #expect(theirs?.lsn == info.lsn, "\(key) on replica \(i + 1)")
                        #expect(theirs?.size == info.size, "\(key) on replica \(i + 1)")
                        #expect(theirs?.contentChecksum == info.contentChecksum, "\(key) on replica \(i + 1)")
                    }
                }
                for node in cluster.nodes {
                    for (key, info) in contents[0] { #expect(try node.localStore.head(key) == info) }
                }
                #expect(Set(cluster.nodes.map(\.localStore.lastEnqueuedLSN)).count == 1)

                // Each key holds its last acknowledged write.
                let live = Set(last.values.filter { $0.value != nil }.map(\.key))
                #expect(Set(contents[0].keys.map(\.string)) == live)
                for (key, ack) in last.sorted(by: { $0.key < $1.key }) {
                    if let value = ack.value {
                        let object = try await client.get(key)
                        #expect(object.info.lsn == ack.lsn, "\(key)")
                        #expect(object.bytes == value, "\(key)")
                    } else {
                        await #expect("\(key) was deleted last") { _ = try await client.get(key) } throws: { code(of: $0) == .notFound }
                    }
                }
                let head = await cluster.head.metrics
                #expect(head.writesCommitted >= writers * opsPerWriter)
                #expect(head.uncommittedBytes == 0)
            }
        }

        @Test("a sequential client always reads its latest acknowledged write", .timeLimit(.minutes(1)))
        func readYourWrites() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                var generator = SplitMix64(seed: 7)
                var latest: [String: WriteReceipt] = [:]
                for i in 0..<300 {
                    let key = "ryw/\(generator.next() % 4)"
                    let value = Array("v\(i)".utf8) + pseudoRandomBytes(Int(generator.next() % 512), seed: UInt64(i))
                    let receipt = try await client.put(key, value)
                    if let previous = latest[key] { #expect(receipt.lsn > previous.lsn) }
                    latest[key] = receipt
                    let object = try await client.get(key)
                    #expect(object.bytes == value, "read \(i) of \(key)")
                    #expect(object.info.lsn == receipt.lsn, "read \(i) of \(key)")
                }
            }
        }

        @Test("the same write sent twice commits once and returns the same LSN", .timeLimit(.minutes(1)))
        func exactlyOnce() async throws {
            try await withTestCluster { cluster in
                let epoch = await cluster.epoch
                let connection = try await cluster.rawConnection(to: cluster.head)
                defer { connection.close() }
                func send(_ request: WriteRequest) async throws -> LSN {
                    let reply = try await connection.request(Frame(type: .write, epoch: epoch, payload: WritePayload.encode(request)),
                                                             timeout: .seconds(10))
                    #expect(reply.type == .writeResult)
                    return try LSNPayload.decode(reply.payload)
                }

                let before = await cluster.head.metrics

                // Sent again after it committed.
                let once = WriteRequest(requestID: RequestID(high: 42, low: 1), type: .put, key: try Key("eo/once"), value: Array("first".utf8))
                let first = try await send(once)
                let again = try await send(once)
                #expect(again == first)

                // Sent twice at the same time (the second while the first is in flight).
                let twice = WriteRequest(requestID: RequestID(high: 42, low: 2), type: .put, key: try Key("eo/twice"), value: Array("x".utf8))
                async let a = send(twice)
                async let b = send(twice)
                let (lsnA, lsnB) = try await (a, b)
                #expect(lsnA == lsnB)

                // The same id with another value is still the first write (the id decides).
                var changed = once
                changed.value = Array("changed".utf8)
                changed.contentChecksum = XXH3.hash(changed.value)
                #expect(try await send(changed) == first)

                // Two writes committed; the repeats were answered, not committed again.
                let after = await cluster.head.metrics
                #expect(after.writesCommitted - before.writesCommitted == 2)
                #expect(after.writesRefused == before.writesRefused)
                #expect(after.lastAccepted.seq - before.lastAccepted.seq == 2)

                #expect(try await cluster.client.get("eo/once").bytes == Array("first".utf8))
                #expect(try await cluster.client.head("eo/once").lsn == first)
                for node in cluster.nodes {
                    let records = try await node.localStore.records(after: .zero).collect()
                    #expect(records.filter { $0.header.requestID == once.requestID }.map(\.lsn) == [first], "\(node.configuration.id)")
                    #expect(records.filter { $0.header.requestID == twice.requestID }.map(\.lsn) == [lsnA], "\(node.configuration.id)")
                }
            }
        }

        @Test("a streamed 32 MiB object comes back byte-identical, on every replica at the same LSN", .timeLimit(.minutes(1)))
        func largeObject() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let size = (32 << 20) + 12_345
                let content = pseudoRandomBytes(size, seed: 99)
                // Pieces that do not line up with the client's chunks.
                let pieces = Slices(content: content, pieceSize: 300_001)
                let receipt = try await client.put("big/object", streaming: pieces, contentType: "application/x-test")
                #expect(receipt.size == UInt64(size))
                #expect(receipt.contentChecksum == XXH3.hash(content))

                // Acknowledged: every replica has the manifest.
                let chunkSize = CatenaClient.Configuration().chunkSize
                for node in cluster.nodes {
                    let info = try #require(try node.localStore.head(try Key("big/object")), "\(node.configuration.id)")
                    #expect(info.lsn == receipt.lsn, "\(node.configuration.id)")
                    #expect(info.size == UInt64(size))
                    #expect(info.contentChecksum == receipt.contentChecksum)
                    #expect(info.chunkCount == (size + chunkSize - 1) / chunkSize)
                }

                let stream = try await client.getStreaming("big/object")
                #expect(stream.info.size == UInt64(size))
                #expect(stream.info.lsn == receipt.lsn)
                #expect(stream.info.contentType == "application/x-test")
                var offset = 0
                var identical = true
                var iterator = stream.makeAsyncIterator()
                while let piece = try await iterator.nextChunk() {
                    guard offset + piece.count <= size else { identical = false; break }
                    if !content[offset..<(offset + piece.count)].elementsEqual(piece) { identical = false }
                    offset += piece.count
                }
                #expect(identical)
                #expect(offset == size)
            }
        }
    }
}

/// `content` as an `AsyncSequence` of pieces of `pieceSize` bytes.
struct Slices: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let content: [UInt8]
    let pieceSize: Int

    func makeAsyncIterator() -> Iterator { Iterator(content: content, pieceSize: pieceSize) }

    struct Iterator: AsyncIteratorProtocol {
        let content: [UInt8]
        let pieceSize: Int
        var offset = 0

        mutating func next() async -> [UInt8]? {
            guard offset < content.count else { return nil }
            let end = Swift.min(offset + pieceSize, content.count)
            defer { offset = end }
            return Array(content[offset..<end])
        }
    }
}

extension InProcessChainTests {
    @Suite("Abandoned reads")
    struct AbandonedReads {
        @Test("a get stream dropped half-way does not stall the client's connection to the tail", .timeLimit(.minutes(1)))
        func abandonedStreamDoesNotStallTheConnection() async throws {
            try await withTestCluster { cluster in
                var configuration = CatenaClient.Configuration()
                configuration.requestTimeout = .seconds(30)
                let client = cluster.client
                let big = pseudoRandomBytes(12 << 20, seed: 7)
                try await client.put("abandon/big", big)
                try await client.put("abandon/small", [1, 2, 3])
                do {
                    let stream = try await client.getStreaming("abandon/big")
                    var iterator = stream.makeAsyncIterator()
                    let first = try await iterator.nextChunk()
                    #expect(first?.isEmpty == false)
                    // Dropped here, with most of the object still to come.
                }
                // The same client (the same connection to the tail) answers at once, not after
                // the stream's idle timeout.
                let start = ContinuousClock.now
                for _ in 0..<20 {
                    #expect(try await client.get("abandon/small").bytes == [1, 2, 3])
                }
                #expect(ContinuousClock.now - start < .seconds(5))
            }
        }
    }
}
