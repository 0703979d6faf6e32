import CatenaClient
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
            try await withCluster(nodes: 2) { cluster in
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
    }
}
