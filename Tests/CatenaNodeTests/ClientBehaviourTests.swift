import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaWire
import CatenaNetwork
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

extension InProcessChainTests {
    /// What a caller of ``CatenaClient`` can rely on beyond the data it stores: a closed client
    /// stays closed, a get never reserves more memory than it was allowed, a stream nobody reads
    /// holds up no other request, and a client can be made before its cluster is up.
    @Suite("Client library behaviour")
    struct ClientBehaviour {
        static func configuration(timeout: Duration = .seconds(10)) -> CatenaClient.Configuration {
            var configuration = CatenaClient.Configuration()
            configuration.clusterID = TestCluster.clusterID
            configuration.requestTimeout = timeout
            return configuration
        }

        @Test("close() is final: calls in flight end with closed, later calls throw closed at once and open no connection",
              .timeLimit(.minutes(1)))
        func closeIsFinal() async throws {
            try await withTestCluster { cluster in
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: Self.configuration(), logger: testLogger)
                let big = pseudoRandomBytes(24 << 20, seed: 11)
                try await client.put("close/big", big)
                try await client.put("close/small", [1, 2, 3])

                // In flight when the client closes: a stream read half-way, and a writer.
                let stream = try await client.getStreaming("close/big")
                var chunks = stream.makeAsyncIterator()
                var received = try #require(try await chunks.nextChunk()).count
                let writes = Atomic<Int>(0)
                // Writes until close() ends it — or for 10 s, if close does not.
                let writer = Task {
                    let stopAt = ContinuousClock.now + .seconds(10)
                    while ContinuousClock.now < stopAt {
                        try await client.put("close/loop", [7])
                        writes.add(1, ordering: .relaxed)
                    }
                }
                while writes.load(ordering: .relaxed) < 5 { try await Task.sleep(for: .milliseconds(5)) }

                await client.close()
                #expect(client.isClosed)

                let ended = ContinuousClock.now
                let writerOutcome = await writer.result
                #expect(ContinuousClock.now - ended < .seconds(5), "the writer did not stop after close")
                if case .failure(let error) = writerOutcome {
                    #expect(code(of: error) == .closed, "\(error)")
                } else {
                    Issue.record("the writer went on writing after close")
                }
                // The stream either had every frame already (then it completes, checksum checked)
                // or fails with closed; it never hangs or yields wrong bytes.
                do {
                    while let piece = try await chunks.nextChunk() { received += piece.count }
                    #expect(received == big.count, "the stream ended early without an error")
                } catch {
                    #expect(code(of: error) == .closed, "\(error)")
                }

                // Every call from now on: closed, at once — none reopens a connection.
                let start = ContinuousClock.now
                await #expect { try await client.put("close/after", [1]) } throws: { code(of: $0) == .closed }
                await #expect { try await client.get("close/small") } throws: { code(of: $0) == .closed }
                await #expect { try await client.getStreaming("close/small") } throws: { code(of: $0) == .closed }
                await #expect { try await client.head("close/small") } throws: { code(of: $0) == .closed }
                await #expect { try await client.list(prefix: "close/") } throws: { code(of: $0) == .closed }
                await #expect { try await client.delete("close/small") } throws: { code(of: $0) == .closed }
                await #expect { try await client.connect() } throws: { code(of: $0) == .closed }
                #expect(ContinuousClock.now - start < .seconds(1))
                await client.close()  // a second close does nothing more

                // The cluster never saw those calls: the key is still there, unchanged.
                #expect(try await cluster.client.get("close/small").bytes == [1, 2, 3])
            }
        }

        @Test("get refuses an object above its limit (the call's, or the client's) before reading it; getStreaming reads it",
              .timeLimit(.minutes(1)))
        func boundedGets() async throws {
            try await withTestCluster { cluster in
                let value = pseudoRandomBytes(3 << 20, seed: 12)
                try await cluster.client.put("bounded/three", value)
                try await cluster.client.put("bounded/small", [9])

                await #expect { try await cluster.client.get("bounded/three", upTo: 1 << 20) } throws: { code(of: $0) == .valueTooLarge }
                #expect(try await cluster.client.get("bounded/three", upTo: 3 << 20).bytes == value)
                await #expect { try await cluster.client.get("bounded/three", upTo: -1) } throws: { code(of: $0) == .invalidArgument }

                // The limit travels with the request: the tail refuses before sending any byte
                // (its first reply is the error, not the object's info).
                let tail = try await RequestConnection.connect(to: cluster.tail.address,
                                                               hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
                defer { tail.close() }
                let chain = try #require(cluster.client.chainConfiguration)
                let replies = try await tail.stream(Frame(type: .get, chainID: chain.chainID, epoch: chain.epoch,
                                                          payload: GetPayload.encode(try Key("bounded/three"), maxSize: 1 << 20)),
                                                    timeout: .seconds(10))
                await #expect { _ = try await replies.next() } throws: { code(of: $0) == .valueTooLarge }

                var configuration = Self.configuration()
                configuration.maxGetSize = 1 << 20
                let strict = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: testLogger)
                do {
                    await #expect { try await strict.get("bounded/three") } throws: { code(of: $0) == .valueTooLarge }
                    // The refused object's frames do not stall the connection the next get uses.
                    #expect(try await strict.get("bounded/small").bytes == [9])
                    #expect(try await strict.get("bounded/three", upTo: 4 << 20).bytes == value)
                    var streamed: [UInt8] = []
                    for try await piece in try await strict.getStreaming("bounded/three") { streamed += piece }
                    #expect(streamed == value)
                    // The same as ByteBuffers, as they arrived.
                    var buffered: [UInt8] = []
                    for try await buffer in try await strict.getStreaming("bounded/three").byteBuffers {
                        buffered += buffer.readableBytesView
                    }
                    #expect(buffered == value)
                } catch {
                    await strict.close()
                    throw error
                }
                await strict.close()
            }
        }

        @Test("a stream held unread for longer than the request timeout reads on to the end: a slow consumer is not a silent server",
              .timeLimit(.minutes(1)))
        func slowConsumerIsNotTimedOut() async throws {
            try await withTestCluster { cluster in
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: Self.configuration(), logger: testLogger)
                do {
                    // More than the stream's window and the sockets hold, so the buffer fills.
                    let big = pseudoRandomBytes(48 << 20, seed: 17)
                    try await client.put("slow/big", big)
                    let slow = client.with(requestTimeout: .seconds(1))
                    let stream = try await slow.getStreaming("slow/big")
                    var chunks = stream.makeAsyncIterator()
                    var received = try #require(try await chunks.nextChunk())
                    try await Task.sleep(for: .seconds(3))  // three request timeouts without reading
                    while let piece = try await chunks.nextChunk() { received += piece }
                    #expect(received == big)
                } catch {
                    await client.close()
                    throw error
                }
                await client.close()
            }
        }

        @Test("a stream held unread does not hold up the client's other requests: 1,000 small gets complete meanwhile",
              .timeLimit(.minutes(1)))
        func unreadStreamBlocksNothing() async throws {
            try await withTestCluster { cluster in
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: Self.configuration(), logger: testLogger)
                do {
                    // Far more than a stream's window and the sockets hold: the tail has to wait.
                    let big = pseudoRandomBytes(48 << 20, seed: 13)
                    try await client.put("hol/big", big)
                    try await client.put("hol/small", Array("small".utf8))

                    let stream = try await client.getStreaming("hol/big")
                    var chunks = stream.makeAsyncIterator()
                    var received = try #require(try await chunks.nextChunk())

                    // 1,000 gets, 8 at a time, on the same client while the stream is not read.
                    let start = ContinuousClock.now
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for worker in 0..<8 {
                            group.addTask {
                                for _ in 0..<125 {
                                    let object = try await client.get("hol/small")
                                    #expect(object.bytes == Array("small".utf8), "worker \(worker)")
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                    #expect(ContinuousClock.now - start < .seconds(30))

                    // The stream then reads on to the end, byte-identical.
                    while let piece = try await chunks.nextChunk() { received += piece }
                    #expect(received == big)
                    // Its connection, read to the end, serves the next stream.
                    var again: [UInt8] = []
                    for try await piece in try await client.getStreaming("hol/small") { again += piece }
                    #expect(again == Array("small".utf8))
                } catch {
                    await client.close()
                    throw error
                }
                await client.close()
            }
        }

        @Test("ranged gets through the chain equal the slices of the object, chunked or not; a range past the end is refused",
              .timeLimit(.minutes(1)))
        func rangedGets() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let chunked = pseudoRandomBytes((5 << 20) + 777, seed: 14)
                try await client.put("range/chunked", chunked)
                let small = Array("0123456789".utf8)
                try await client.put("range/small", small)
                var rng = SplitMix64(seed: 15)
                for (name, object) in [("range/chunked", chunked), ("range/small", small)] {
                    let size = UInt64(object.count)
                    var ranges: [Range<UInt64>] = [0..<0, 0..<size, size..<size, (size - 1)..<(size + 50)]
                    for _ in 0..<12 {
                        let a = UInt64.random(in: 0...size, using: &rng)
                        ranges.append(a..<UInt64.random(in: a...min(size, a + (2 << 20)), using: &rng))
                    }
                    for range in ranges {
                        let expected = Array(object[Int(range.lowerBound)..<Int(min(range.upperBound, size))])
                        let read = try await client.get(name, range: range)
                        #expect(read.bytes == expected, "\(name) \(range)")
                        #expect(read.range == range.lowerBound..<min(range.upperBound, size))
                        #expect(read.info.size == size)
                        var streamed: [UInt8] = []
                        for try await piece in try await client.getStreaming(name, range: range) { streamed += piece }
                        #expect(streamed == expected, "streamed \(name) \(range)")
                    }
                    await #expect { try await client.get(name, range: (size + 1)..<(size + 2)) } throws: { code(of: $0) == .invalidArgument }
                }
                await #expect { try await client.get("range/chunked", range: 0..<(3 << 20), upTo: 1 << 20) } throws: { code(of: $0) == .valueTooLarge }
                await #expect { try await client.get("range/missing", range: 0..<1) } throws: { code(of: $0) == .notFound }
            }
        }

        @Test("exists tells a stored key from a missing one; a batch delete reports each key, in order, invalid ones failing alone",
              .timeLimit(.minutes(1)))
        func existsAndBatchDelete() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let keys = (0..<40).map { "batch/\($0)" }
                for key in keys { try await client.put(key, Array(key.utf8)) }
                #expect(try await client.exists("batch/7"))
                #expect(try await client.exists("batch/none") == false)
                await #expect { try await client.exists("") } throws: { code(of: $0) == .invalidKey }

                let asked = Array(keys[0..<30]) + ["", "batch/never-stored"]
                let results = await client.delete(asked, concurrency: 8)
                #expect(results.map(\.key) == asked)
                for result in results {
                    switch (result.key, result.outcome) {
                    case ("", .failure(let error)): #expect(error.code == .invalidKey)
                    case (_, .success): break
                    case (let key, .failure(let error)): Issue.record("\(key): \(error)")
                    }
                }
                #expect(results.filter { (try? $0.outcome.get()) != nil }.count == 31)
                for key in keys[0..<30] { #expect(try await client.exists(key) == false, "\(key)") }
                for key in keys[30...] { #expect(try await client.exists(key), "\(key)") }
                #expect(await client.delete([]).isEmpty)
            }
        }

        @Test("a client's calls spread over connectionsPerNode connections; a view with(...) takes its own timeout and retry policy and shares the rest",
              .timeLimit(.minutes(1)))
        func connectionsTimeoutsAndRetries() async throws {
            try await withTestCluster { cluster in
                var configuration = Self.configuration()
                configuration.connectionsPerNode = 4
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: testLogger)
                do {
                    let before = cluster.head.serverMetrics.clientConnections
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for i in 0..<64 { group.addTask { try await client.put("spread/\(i)", [UInt8(i)]) } }
                        try await group.waitForAll()
                    }
                    #expect(cluster.head.serverMetrics.clientConnections - before == 4)
                    for i in 0..<64 { #expect(try await client.get("spread/\(i)").bytes == [UInt8(i)]) }

                    // A view shares the connections and the chain: no new connection, same answers.
                    let quick = client.with(requestTimeout: .milliseconds(500), retry: .never)
                    #expect(try await quick.get("spread/3").bytes == [3])
                    #expect(cluster.head.serverMetrics.clientConnections - before == 4)
                    await quick.close()
                    #expect(client.isClosed, "a view's close closes the client it shares everything with")
                } catch {
                    await client.close()
                    throw error
                }
                await #expect { try await CatenaClient(masters: ["127.0.0.1:1"], configuration: { var c = Self.configuration(); c.connectionsPerNode = 0; return c }()) }
                    throws: { code(of: $0) == .invalidArgument }
            }

            // With nobody at the master's address: the client's 20 s against a view's 300 ms, and
            // retries against none.
            let port = try await Self.freePort()
            let lonely = try CatenaClient(masters: ["127.0.0.1:\(port)"], configuration: Self.configuration(timeout: .seconds(20)), logger: testLogger)
            var start = ContinuousClock.now
            await #expect { try await lonely.with(requestTimeout: .milliseconds(300)).head("k") } throws: { code(of: $0) == .unavailable || code(of: $0) == .timeout }
            #expect(ContinuousClock.now - start < .seconds(3))
            start = ContinuousClock.now
            await #expect { try await lonely.with(retry: .never).connect() } throws: { code(of: $0) == .unavailable }
            #expect(ContinuousClock.now - start < .seconds(3), "one attempt took as long as the 20 s timeout")
            await lonely.close()
        }

        @Test("put(contentsOf:) and get(into:) move files with progress; a failed get leaves no file; a missing file is notFound",
              .timeLimit(.minutes(1)))
        func fileHelpers() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let directory = cluster.directory
                let source = directory + "/source.bin"
                let content = pseudoRandomBytes((5 << 20) + 99, seed: 16)
                try Data(content).write(to: URL(fileURLWithPath: source))

                let seen = Mutex<[UInt64]>([])
                let receipt = try await client.put("files/big", contentsOf: source, contentType: "application/x-test") { done, total in
                    #expect(total == UInt64(content.count))
                    seen.withLock { $0.append(done) }
                }
                #expect(receipt.size == UInt64(content.count))
                let reported = seen.withLock { $0 }
                #expect(reported == reported.sorted() && reported.last == UInt64(content.count) && reported.count >= 6)

                let target = directory + "/copy.bin"
                let got = Mutex<[UInt64]>([])
                let info = try await client.get("files/big", into: target) { done, _ in got.withLock { $0.append(done) } }
                #expect(info.contentType == "application/x-test")
                #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(content))
                #expect(got.withLock { $0.last } == UInt64(content.count))
                #expect(!FileManager.default.fileExists(atPath: target + ".catena-partial"))

                // ByteBuffers streamed in come back byte-identical.
                let buffers = AsyncStream<ByteBuffer> { c in
                    for i in 0..<5 { c.yield(ByteBuffer(bytes: content[(i << 20)..<min(content.count, (i + 1) << 20)])) }
                    c.yield(ByteBuffer(bytes: content[(5 << 20)...]))
                    c.finish()
                }
                let streamed = try await client.put("files/buffers", streaming: buffers)
                #expect(streamed.size == UInt64(content.count) && streamed.contentChecksum == receipt.contentChecksum)
                #expect(try await client.get("files/buffers").bytes == content)

                // A pipe (its size says nothing) is read to its end.
                let fifo = directory + "/pipe"
                #expect(mkfifo(fifo, 0o600) == 0)
                let writer = Thread {
                    guard let handle = FileHandle(forWritingAtPath: fifo) else { return }
                    handle.write(Data(content))
                    try? handle.close()
                }
                writer.start()
                let piped = try await client.put("files/piped", contentsOf: fifo)
                #expect(piped.size == UInt64(content.count))
                #expect(try await client.get("files/piped").bytes == content)

                // Small files take one plain put.
                try Data("tiny".utf8).write(to: URL(fileURLWithPath: directory + "/tiny.txt"))
                try await client.put("files/tiny", contentsOf: directory + "/tiny.txt")
                #expect(try await client.get("files/tiny").bytes == Array("tiny".utf8))

                await #expect { try await client.get("files/missing", into: directory + "/never.bin") } throws: { code(of: $0) == .notFound }
                #expect(!FileManager.default.fileExists(atPath: directory + "/never.bin"))
                #expect(!FileManager.default.fileExists(atPath: directory + "/never.bin.catena-partial"))
                await #expect { try await client.put("files/x", contentsOf: directory + "/no-such-file") } throws: { code(of: $0) == .notFound }
                await #expect { try await client.get("files/tiny", into: directory + "/no-such-dir/x") } throws: { code(of: $0) == .notFound }
            }
        }

        @Test("a listing with a delimiter rolls keys up into common prefixes, page by page through the chain", .timeLimit(.minutes(1)))
        func delimitedListing() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let keys = ["p/a", "p/b/1", "p/b/2", "p/c/", "p/c/x/y", "p/d", "p/e/1", "q/z"]
                for key in keys { try await client.put(key, [1]) }
                var objects: [String] = []
                var prefixes: [String] = []
                var cursor: Key?
                repeat {
                    let page = try await client.list(prefix: "p/", delimiter: "/", after: cursor, limit: 2)
                    #expect(page.objects.count + page.commonPrefixes.count <= 2)
                    objects += page.objects.map(\.key.string)
                    prefixes += page.commonPrefixes.map(\.string)
                    cursor = page.nextCursor
                } while cursor != nil
                #expect(objects == ["p/a", "p/d"])
                #expect(prefixes == ["p/b/", "p/c/", "p/e/"])
                let plain = try await client.list(prefix: "p/")
                #expect(plain.commonPrefixes.isEmpty && plain.objects.count == 7)
            }
        }

        @Test("a client made before its cluster is up connects on first use", .timeLimit(.minutes(1)))
        func lazyStart() async throws {
            #expect(throws: CatenaError.self) { _ = try CatenaClient(masters: ["no-port"]) }
            #expect(throws: CatenaError.self) { _ = try CatenaClient(masters: []) }

            // A port nobody listens on now: the master will.
            let port = try await Self.freePort()
            let early = try CatenaClient(masters: ["127.0.0.1:\(port)"], configuration: Self.configuration(timeout: .seconds(20)),
                                         logger: testLogger)
            #expect(early.chainConfiguration == nil)
            var options = TestCluster.Options()
            options.master = { $0.listen = Address(host: "127.0.0.1", port: UInt16(port)) }
            do {
                try await withTestCluster(options) { cluster in
                    #expect(cluster.masterAddress.port == UInt16(port))
                    let receipt = try await early.put("lazy/key", Array("v".utf8))
                    #expect(try await early.get("lazy/key").info.lsn == receipt.lsn)
                    #expect(early.chainConfiguration != nil)
                }
            } catch {
                await early.close()
                throw error
            }
            await early.close()
        }

        /// A TCP port on 127.0.0.1 that was free a moment ago.
        static func freePort() async throws -> Int {
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
            let port = try #require(channel.localAddress?.port)
            try await channel.close()
            return port
        }
    }
}
