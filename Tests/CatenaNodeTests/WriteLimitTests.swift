import CatenaCatchUpWire
import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Foundation
import NIOCore
import Testing

extension InProcessChainTests {
    @Suite("Writes the chain cannot carry")
    struct WriteLimitsInChain {
        /// A put of `key` whose write frame is exactly `frameSize` bytes: a 16 MiB value (the
        /// store's limit) and a may-skip field (one a later version might add) filling the rest.
        static func put(_ key: Key, writeFrameSize frameSize: Int, seed: UInt64) -> WriteRequest {
            let value = pseudoRandomBytes(16 << 20, seed: seed)
            // Frame header and checksum, then type, key, request id, checksum, two u32 lengths.
            let fixed = Frame.minimumSize + 1 + 2 + key.bytes.count + 16 + 8 + 4 + 4 + value.count
            let field = RecordExtension(tag: 0x7F10, mustUnderstand: false, value: pseudoRandomBytes(frameSize - fixed - 8, seed: seed + 1))
            return WriteRequest(requestID: RequestID(high: seed, low: 1), type: .put, key: key, value: value, extensions: [field])
        }

        @Test("a write whose replicate frame would exceed the frame limit is refused at the head before it gets an LSN; the chain goes on",
              .timeLimit(.minutes(1)))
        func unforwardableWriteIsRefused() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                let limit = cluster.head.configuration.connectionLimits.maxFrameSize
                let connection = try await cluster.rawConnection(to: cluster.head)
                defer { connection.close() }
                // The write frame fits the limit exactly; the replicate frame holding its record
                // would be 61 bytes larger.
                let request = Self.put(try Key("limits/too-big"), writeFrameSize: limit, seed: 1)
                let frame = Frame(type: .write, chainID: 1, payload: WritePayload.encode(request))
                #expect(frame.encodedSize == limit)
                let before = cluster.head.localStore.highestLSN
                await #expect {
                    try await connection.request(frame, timeout: .seconds(10))
                } throws: { error in
                    code(of: error) == .valueTooLarge && "\(error)".contains("\(limit)")
                }
                #expect(cluster.head.localStore.highestLSN == before, "the refused write got an LSN")
                // The connection and the chain go on.
                let pong = try await connection.request(Frame(type: .ping), timeout: .seconds(10))
                #expect(pong.type == .pong)
                let receipt = try await cluster.client.put("limits/after", Array("still replicating".utf8))
                for node in cluster.nodes {
                    #expect(try node.localStore.head(try Key("limits/after"))?.lsn == receipt.lsn)
                }
            }
        }
    
        @Test("the largest record the head accepts commits on every replica, and a joining node copies it, LZ4 and raw; one byte more is refused",
              .timeLimit(.minutes(1)))
        func largestAcceptedRecordTravels() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                let limit = cluster.head.configuration.connectionLimits.maxFrameSize
                let largest = WriteLimits.maxRecordLength(maxFrameSize: limit)
                let connection = try await cluster.rawConnection(to: cluster.head)
                defer { connection.close() }
                func put(_ name: String, recordLength: Int, seed: UInt64) throws -> WriteRequest {
                    let key = try Key(name)
                    // A 16 MiB value of random bytes (LZ4 cannot shrink it) and a may-skip field.
                    let value = pseudoRandomBytes(16 << 20, seed: seed)
                    let field = recordLength - RecordHeader.overhead - key.bytes.count - 8 - value.count
                    let ext = RecordExtension(tag: 0x7F10, mustUnderstand: false, value: pseudoRandomBytes(field, seed: seed + 1))
                    let request = WriteRequest(requestID: RequestID(high: seed, low: 7), type: .put, key: key, value: value, extensions: [ext])
                    #expect(WriteLimits.recordLength(of: request) == recordLength)
                    return request
                }
                let fits = try put("limits/largest", recordLength: largest, seed: 11)
                let reply = try await connection.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(fits)), timeout: .seconds(30))
                let lsn = try LSNPayload.decode(reply.payload)
                for node in cluster.nodes {
                    #expect(try node.localStore.head(fits.key)?.lsn == lsn, "\(node.configuration.id)")
                }
                let over = try put("limits/over", recordLength: largest + 1, seed: 13)
                await #expect {
                    try await connection.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(over)), timeout: .seconds(30))
                } throws: { code(of: $0) == .valueTooLarge }

                // A joiner copies it: one record larger than the 4 MiB chunk size travels alone,
                // raw and as an LZ4 frame of stored (incompressible) blocks.
                #expect(largest > CatchUpRequest.defaultChunkBytes)
                let tail = cluster.tail.localStore
                for compress in [true, false] {
                    var sc = StoreConfiguration(directory: cluster.directory + "/joiner-\(compress)", clusterID: TestCluster.clusterID,
                                                nodeID: "joiner")
                    sc.durability = .none
                    let store = try await Store.open(sc, logger: testLogger)
                    var configuration = CatchUpReceiver.Configuration(source: cluster.tail.address, clusterID: TestCluster.clusterID,
                                                                      chainID: try #require(cluster.tail.chainConfiguration?.chainID))
                    configuration.compress = compress
                    let progress = try await CatchUpReceiver(configuration: configuration, store: store, logger: testLogger)
                        .run(until: { $0.isCaughtUp })
                    #expect(progress.lastLSN == tail.highestLSN)
                    #expect(progress.chunksRefused == 0)
                    #expect(progress.retries == 0, "\(progress.lastError.map { "\($0)" } ?? "")")
                    #expect(try store.head(fits.key)?.lsn == lsn)
                    if compress { #expect(progress.wireBytes > progress.recordBytesInstalled, "incompressible: LZ4 adds its fields") }
                    try await expectIdentical(tail, store)
                    await store.close()
                }
            }
        }

        @Test("metadata through the client: 8 KiB is stored and read back, more is refused with invalidArgument; the client checks before sending",
              .timeLimit(.minutes(1)))
        func metadataThroughTheClient() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                let client = cluster.client
                let exactly = ["owner": String(repeating: "o", count: 4091), "tier": String(repeating: "é", count: 2046)]
                #expect(exactly.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count } == WriteLimits.maxUserMetadataBytes)
                let receipt = try await client.put("meta/ok", Array("v".utf8), metadata: exactly)
                #expect(try await client.head("meta/ok").userMetadata == exactly)
                #expect(try await client.get("meta/ok").info.lsn == receipt.lsn)
                var over = exactly
                over["x"] = ""
                await #expect { try await client.put("meta/over", Array("v".utf8), metadata: over) } throws: { code(of: $0) == .invalidArgument }
                // Also on a chunked put (the metadata travels in the manifest).
                await #expect { try await client.put("meta/over-chunked", pseudoRandomBytes(3 << 20, seed: 3), metadata: over) } throws: {
                    code(of: $0) == .invalidArgument
                }
                await #expect { try await client.head("meta/over") } throws: { code(of: $0) == .notFound }
                await #expect { try await client.head("meta/over-chunked") } throws: { code(of: $0) == .notFound }

                // A client whose frame limit is smaller than the nodes' refuses, by itself, a write
                // the head would take: the check runs before anything is sent.
                var small = CatenaClient.Configuration()
                small.clusterID = TestCluster.clusterID
                small.connectionLimits.maxFrameSize = 1 << 20
                small.chunkSize = 4 << 20
                let strict = try CatenaClient(masters: [cluster.master.address.description], configuration: small, logger: testLogger)
                do {
                    try await strict.put("meta/big", pseudoRandomBytes(2 << 20, seed: 4))
                    Issue.record("a 2 MiB record passed a 1 MiB frame limit")
                } catch let error as CatenaError {
                    #expect(error.code == .valueTooLarge)
                    #expect(error.message.contains("\(1 << 20)-byte frame limit"), "\(error)")
                }
                await strict.close()
                _ = try await client.put("meta/big", pseudoRandomBytes(2 << 20, seed: 4))
            }
        }

        @Test("raw writes with metadata that is not UTF-8, malformed or over 8 KiB get invalidArgument; the connection goes on",
              .timeLimit(.minutes(1)))
        func metadataInRawFrames() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                let connection = try await cluster.rawConnection(to: cluster.head)
                defer { connection.close() }
                func entry(_ name: [UInt8], _ value: [UInt8]) -> RecordExtension {
                    RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false,
                                    value: [UInt8(name.count & 0xFF), UInt8(name.count >> 8)] + name + value)
                }
                let bad: [[RecordExtension]] = [
                    [entry([0xFF, 0xFE], Array("v".utf8))],
                    [entry(Array("n".utf8), [0xC0, 0x80])],  // an overlong encoding of NUL
                    [RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false, value: [9, 0, 1])],
                    [entry(Array("a".utf8), Array(repeating: UInt8(ascii: "v"), count: 5000)),
                     entry(Array("b".utf8), Array(repeating: UInt8(ascii: "v"), count: 3191))],  // 8193 bytes
                ]
                for (i, extensions) in bad.enumerated() {
                    let request = WriteRequest(requestID: RequestID(high: 9, low: UInt64(i + 1)), type: .put, key: try Key("meta/raw/\(i)"),
                                               value: [1], extensions: extensions)
                    await #expect("case \(i)") {
                        try await connection.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(request)), timeout: .seconds(10))
                    } throws: { code(of: $0) == .invalidArgument }
                }
                let pong = try await connection.request(Frame(type: .ping), timeout: .seconds(10))
                #expect(pong.type == .pong)
                #expect(try cluster.head.localStore.list(prefix: Array("meta/raw/".utf8)).objects.isEmpty)
            }
        }
    }
}
