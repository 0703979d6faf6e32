import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Testing

extension InProcessChainTests {
    /// Reads from every member (CRAQ): clean keys answered locally, dirty ones at the version
    /// the tail says is committed, and the read modes' routing.
    @Suite("Reads from every member (CRAQ)")
    struct CRAQ {
        /// A `get` of `key` sent straight to `node` in `mode`: the bytes, or the error.
        /// `session`: the reader's session (for mode any).
        static func get(_ key: String, at node: Node, mode: ReadMode?, range: Range<UInt64>? = nil,
                        session: LSN? = nil) async throws -> Result<[UInt8], CatenaError> {
            let connection = try await RequestConnection.connect(
                to: node.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "craq-test"))
            defer { connection.close() }
            let options = RequestOptions(readMode: mode, session: session).encoded()
            let frame = try range.map { Frame(type: .getRange, chainID: 1, headerExtension: options,
                                              payload: RangeRequest(key: try Key(key), offset: $0.lowerBound, length: UInt64($0.count)).encoded()) }
                ?? Frame(type: .get, chainID: 1, headerExtension: options, payload: GetPayload.encode(try Key(key), maxSize: nil))
            do throws(CatenaError) {
                let replies = try await connection.stream(frame, timeout: .seconds(5), window: 4)
                var bytes: [UInt8] = []
                while let reply = try await replies.next() {
                    if reply.type == .objectData { bytes += Array(reply.payload.readableBytesView) }
                }
                return .success(bytes)
            } catch {
                return .failure(error)
            }
        }

        /// A 3-node chain whose tail's disk the test can stall (`holdNextSync`), with one write
        /// committed before `body` runs.
        static func withGatedTail(_ body: (TestCluster, GatedFileSystem) async throws -> Void) async throws {
            let tailDisk = GatedFileSystem(wrapping: PosixFileSystem())
            try await withTestCluster(.init(node: { i, configuration in
                if i == 2 { configuration.store.fileSystem = tailDisk }
            })) { cluster in
                try await cluster.client.put("warm", [1])
                try await body(cluster, tailDisk)
            }
        }

        static func versionQueries(_ node: Node) throws -> Double {
            try PrometheusExposition(parsing: node.renderMetrics()).value("catena_node_version_queries_total") ?? -1
        }

        @Test("every member answers linearizable reads; tail-only reads are redirected to the tail", .timeLimit(.minutes(1)))
        func everyMemberAnswers() async throws {
            try await withTestCluster { cluster in
                try await cluster.client.put("k", Array("v1".utf8))
                for node in cluster.nodes {
                    #expect(try await Self.get("k", at: node, mode: .linearizable).get() == Array("v1".utf8), "\(node.configuration.id)")
                    #expect(try await Self.get("k", at: node, mode: .any).get() == Array("v1".utf8), "\(node.configuration.id)")
                }
                // The tail only (and a client from before read modes, which names none).
                #expect(try await Self.get("k", at: cluster.tail, mode: .tail).get() == Array("v1".utf8))
                for node in cluster.nodes.dropLast() {
                    for mode in [ReadMode.tail, nil] {
                        guard case .failure(let error) = try await Self.get("k", at: node, mode: mode) else {
                            Issue.record("\(node.configuration.id) answered a read for the tail only")
                            continue
                        }
                        #expect(error.code == .redirect, "\(error)")
                    }
                }
                // The client spreads its reads over every member.
                let before = try cluster.nodes.map { try PrometheusExposition(parsing: $0.renderMetrics()).histogram("catena_node_request_duration_seconds", ["op": "get"])?.count ?? 0 }
                for _ in 0..<30 { #expect(try await cluster.client.get("k").bytes == Array("v1".utf8)) }
                let after = try cluster.nodes.map { try PrometheusExposition(parsing: $0.renderMetrics()).histogram("catena_node_request_duration_seconds", ["op": "get"])?.count ?? 0 }
                for (i, (b, a)) in zip(before, after).enumerated() { #expect(a - b >= 5, "node \(i) served \(a - b) of 30 gets") }
                // In mode tail, all of them go to the tail.
                let tailOnly = cluster.client.with(readMode: .tail)
                for _ in 0..<10 { #expect(try await tailOnly.head("k").size == 2) }
                let heads = try cluster.nodes.map { try PrometheusExposition(parsing: $0.renderMetrics()).histogram("catena_node_request_duration_seconds", ["op": "head"])?.count ?? 0 }
                #expect(heads == [0, 0, 10])
            }
        }

        @Test("a key with a write in flight is read at the version the tail has committed", .timeLimit(.minutes(1)))
        func dirtyKeyReadsTheCommittedVersion() async throws {
            try await Self.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                try await client.put("k", Array("v1".utf8))
                try await client.put("other", [1])
                // v2 becomes durable at the head and the middle; the tail's fsync is held, so it
                // is not committed.
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let write = Task { try await client.put("k", Array("v2!!".utf8)) }
                try await cluster.waitFor("v2 is durable at n1 and n2") {
                    cluster.nodes.prefix(2).allSatisfy { (try? $0.localStore.head(try Key("k")))?.size == 4 }
                }
                let queriesBefore = try Self.versionQueries(cluster.head)
                for node in cluster.nodes.prefix(2) {
                    // Linearizable: the committed v1, asked of the tail; any: what is here.
                    #expect(try await Self.get("k", at: node, mode: .linearizable).get() == Array("v1".utf8), "\(node.configuration.id)")
                    #expect(try await Self.get("k", at: node, mode: .any).get() == Array("v2!!".utf8), "\(node.configuration.id)")
                    // A key with nothing in flight is answered without asking.
                    #expect(try await Self.get("other", at: node, mode: .linearizable).get() == [1])
                }
                #expect(try Self.versionQueries(cluster.head) == queriesBefore + 1)
                #expect(try await client.head("k").size == 2)
                #expect(try await client.get("k").bytes == Array("v1".utf8))
                gate.open()
                _ = try await write.value
                // Committed: every member answers v2, with no more questions to the tail.
                let settled = try Self.versionQueries(cluster.head)
                for node in cluster.nodes {
                    #expect(try await Self.get("k", at: node, mode: .linearizable).get() == Array("v2!!".utf8), "\(node.configuration.id)")
                }
                #expect(try Self.versionQueries(cluster.head) == settled)
            }
        }

        @Test("a range of a dirty key is read from the committed version, even past the end of the version in flight", .timeLimit(.minutes(1)))
        func dirtyKeyRange() async throws {
            try await Self.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                try await client.put("r", Array("0123456789".utf8))
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let write = Task { try await client.put("r", Array("ab".utf8)) }
                try await cluster.waitFor("the short version is durable at n1") {
                    (try? cluster.head.localStore.head(try Key("r")))?.size == 2
                }
                // Bytes 5..<8 exist in the committed version only.
                for node in cluster.nodes {
                    #expect(try await Self.get("r", at: node, mode: .linearizable, range: 5..<8).get() == Array("567".utf8), "\(node.configuration.id)")
                }
                gate.open()
                _ = try await write.value
                guard case .failure(let error) = try await Self.get("r", at: cluster.head, mode: .linearizable, range: 5..<8) else {
                    Issue.record("a range past the end of the committed version was served")
                    return
                }
                #expect(error.code == .invalidArgument, "\(error)")
            }
        }

        @Test("a delete in flight is not read as done, and a create in flight reads as absent", .timeLimit(.minutes(1)))
        func dirtyDeleteAndCreate() async throws {
            try await Self.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                try await client.put("gone", Array("still".utf8))
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let delete = Task { try await client.delete("gone") }
                let create = Task { try await client.put("new", [7]) }
                try await cluster.waitFor("both are durable at n1") {
                    let store = cluster.head.localStore
                    return (try? store.head(try Key("new"))) != nil && (try? store.head(try Key("gone"))) == nil
                }
                #expect(try await Self.get("gone", at: cluster.head, mode: .linearizable).get() == Array("still".utf8))
                guard case .failure(let error) = try await Self.get("new", at: cluster.head, mode: .linearizable) else {
                    Issue.record("a create not yet committed was read")
                    return
                }
                #expect(error.code == .notFound, "\(error)")
                #expect(try await Self.get("new", at: cluster.head, mode: .any).get() == [7])
                gate.open()
                _ = try await delete.value
                _ = try await create.value
                #expect(try await client.exists("gone") == false)
                #expect(try await client.get("new").bytes == [7])
            }
        }
    }
}
