import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaWire
import Testing

extension InProcessChainTests {
    /// Server-side copy: the head reads the source from its own log and writes the copy.
    @Suite("Server-side copy")
    struct Copy {
        @Test("a small and a chunked object are copied with their checksum, type and metadata", .timeLimit(.minutes(1)))
        func copies() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let small = pseudoRandomBytes(5000, seed: 3)
                let original = try await client.put("src/small", small, contentType: "text/plain", metadata: ["owner": "ada"])
                let lsn = try await client.copy(from: "src/small", to: "dst/small")
                #expect(lsn > original.lsn)
                let copy = try await client.get("dst/small")
                #expect(copy.bytes == small && copy.info.lsn == lsn)
                #expect(copy.info.contentChecksum == original.contentChecksum)
                #expect(copy.info.contentType == "text/plain" && copy.info.userMetadata == ["owner": "ada"])
                #expect(try await client.get("src/small").info.lsn == original.lsn, "the source is untouched")

                let big = pseudoRandomBytes(3 << 20 + 12345, seed: 4)
                let bigReceipt = try await client.put("src/big", big)
                try await client.copy(from: "src/big", to: "dst/big")
                let info = try await client.head("dst/big")
                #expect(info.chunkCount == 4 && info.size == UInt64(big.count) && info.contentChecksum == bigReceipt.contentChecksum)
                #expect(try await client.get("dst/big").bytes == big)
                #expect(try await client.get("dst/big", range: 1_048_570..<1_048_590).bytes == Array(big[1_048_570..<1_048_590]))
            }
        }

        @Test("a missing source, conditions on the destination, a copy sent to a follower", .timeLimit(.minutes(1)))
        func refusals() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                do throws(CatenaError) {
                    try await client.copy(from: "nothing", to: "x")
                    Issue.record("a copy of a missing key succeeded")
                } catch {
                    #expect(error.code == .notFound)
                }
                try await client.put("a", [1])
                let existing = try await client.put("b", [2])
                await #expect(throws: CatenaError.self) { try await client.copy(from: "a", to: "b", condition: .absent) }
                #expect(try await client.get("b").bytes == [2])
                try await client.copy(from: "a", to: "b", condition: .version(existing.lsn))
                #expect(try await client.get("b").bytes == [1])

                let tail = try #require(cluster.nodes.last)
                let connection = try await RequestConnection.connect(
                    to: tail.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "copier"))
                defer { Task { await connection.close() } }
                let request = CopyRequest(requestID: RequestID.random(), source: try Key("a"), destination: try Key("c"))
                do throws(CatenaError) {
                    _ = try await connection.request(Frame(type: .copy, chainID: 1, payload: request.encoded()), timeout: .seconds(10))
                    Issue.record("a follower copied")
                } catch {
                    #expect(error.code == .redirect, "\(error)")
                }
            }
        }

        @Test("a copy sent twice with one request id applies once, a chunked one included", .timeLimit(.minutes(1)))
        func exactlyOnce() async throws {
            try await withTestCluster { cluster in
                try await cluster.client.put("src", pseudoRandomBytes(2 << 20 + 7, seed: 5))
                let connection = try await RequestConnection.connect(
                    to: cluster.head.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "copier"))
                defer { Task { await connection.close() } }
                let request = CopyRequest(requestID: RequestID.random(), source: try Key("src"), destination: try Key("dst"))
                let frame = Frame(type: .copy, chainID: 1, payload: request.encoded())
                let first = try LSNPayload.decode(try await connection.request(frame, timeout: .seconds(10)).payload)
                let logEnd = cluster.head.localStore.lastEnqueuedLSN
                let second = try LSNPayload.decode(try await connection.request(frame, timeout: .seconds(10)).payload)
                #expect(first == second)
                #expect(cluster.head.localStore.lastEnqueuedLSN == logEnd, "the retry appended nothing")
                #expect(try await cluster.client.get("dst").bytes == pseudoRandomBytes(2 << 20 + 7, seed: 5))
            }
        }
    }
}
