@testable import CatenaNode
import CatenaCore
import CatenaNetwork
import CatenaWire
import NIOCore
import NIOEmbedded
import NIOPosix
import Synchronization
import Testing

@Suite("The write path's parts")
struct HotPathTests {
    private func frame(_ id: UInt64) -> Frame {
        Frame(type: .writeResult, flags: .reply, chainID: 1, requestID: id, epoch: 1, payload: ByteBuffer(bytes: [UInt8(id)]))
    }

    /// An outlet over an embedded channel that counts its flushes.
    private func outletOnEmbeddedChannel() throws -> (EmbeddedChannel, FlushCounter, FrameOutlet) {
        let channel = EmbeddedChannel()
        let flushes = FlushCounter()
        try channel.pipeline.syncOperations.addHandler(flushes)
        return (channel, flushes, FrameOutlet(channel))
    }

    @Test("an outlet writes what was queued before the event loop ran in order, with one flush")
    func outletCoalesces() throws {
        let (channel, flushes, outlet) = try outletOnEmbeddedChannel()
        for id in 1...5 { outlet.send(frame(UInt64(id))) }
        #expect(try channel.readOutbound(as: Frame.self) == nil, "nothing before the event loop runs")
        channel.embeddedEventLoop.run()
        var ids: [UInt64] = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [1, 2, 3, 4, 5])
        #expect(flushes.count == 1)
        // Later frames go in a flush of their own.
        outlet.send(frame(6))
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self)?.requestID == 6)
        #expect(flushes.count == 2)
        _ = try channel.finish()
    }

    @Test("an outlet's replaceable slot keeps only the latest frame until the event loop runs, written after the turn's other frames")
    func outletReplaces() throws {
        let (channel, flushes, outlet) = try outletOnEmbeddedChannel()
        outlet.sendReplacing(frame(10))
        outlet.send(frame(1))
        outlet.sendReplacing(frame(11))
        outlet.send(frame(2))
        channel.embeddedEventLoop.run()
        var ids: [UInt64] = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [1, 2, 11])
        #expect(flushes.count == 1)
        // The slot is empty once written: the next turn writes only what came since.
        outlet.sendReplacing(frame(12))
        channel.embeddedEventLoop.run()
        ids = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [12])
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self) == nil)
        _ = try channel.finish()
    }

    @Test("acknowledgements: none below one already sent, none after close, the latest of a burst in one frame")
    func ackSender() throws {
        let channel = EmbeddedChannel()
        let acks = AckSender(outlet: FrameOutlet(channel), chainID: 1)
        acks.send(LSN(epoch: 1, seq: 5), epoch: 1)
        acks.send(LSN(epoch: 1, seq: 3), epoch: 1)
        acks.send(LSN(epoch: 1, seq: 7), epoch: 1)
        channel.embeddedEventLoop.run()
        var sent: [LSN] = []
        while let f = try channel.readOutbound(as: Frame.self) {
            #expect(f.type == .acknowledge)
            sent.append(try LSNPayload.decode(f.payload))
        }
        #expect(sent == [LSN(epoch: 1, seq: 7)])
        acks.send(LSN(epoch: 1, seq: 6), epoch: 1)
        acks.close()
        acks.send(LSN(epoch: 1, seq: 9), epoch: 1)
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self) == nil)
        _ = try channel.finish()
    }

    @Test("request slots: a taker waits while all are taken, a given slot goes to it, drain waits for the last", .timeLimit(.minutes(1)))
    func requestSlots() async {
        let slots = RequestSlots(limit: 2)
        await slots.take()
        await slots.take()
        let third = Task { await slots.take(); return true }
        try? await Task.sleep(for: .milliseconds(50))
        slots.give()
        #expect(await third.value)
        // Two taken again (the waiter got the slot given back).
        let drained = Mutex(false)
        let drain = Task {
            await slots.drain()
            drained.withLock { $0 = true }
        }
        try? await Task.sleep(for: .milliseconds(50))
        slots.give()
        try? await Task.sleep(for: .milliseconds(50))
        #expect(!drained.withLock { $0 }, "one request still in progress")
        slots.give()
        await drain.value
        #expect(drained.withLock { $0 })
    }

    @Test("a task preferring an event loop's executor runs on that loop, across suspensions, and so do its child tasks")
    func eventLoopTaskExecutor() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loop = group.next()
        let other = group.next()
        #expect(loop !== other)
        let onLoop = await Task(executorPreference: EventLoopTaskExecutor(loop)) { () async -> [Bool] in
            var seen = [loop.inEventLoop]
            // Resumed by the other loop: the continuation brings the task back to its own.
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in other.execute { c.resume() } }
            seen.append(loop.inEventLoop)
            let child = await withTaskGroup(of: Bool.self) { g in
                g.addTask { loop.inEventLoop }
                return await g.next()!
            }
            seen.append(child)
            let elsewhere = await withTaskGroup(of: Bool.self) { g in
                g.addTask(executorPreference: globalConcurrentExecutor) { loop.inEventLoop || other.inEventLoop }
                return await g.next()!
            }
            seen.append(!elsewhere)
            return seen
        }.value
        #expect(onLoop == [true, true, true, true])
        try await group.shutdownGracefully()
    }

    @Test("a node or master runs half as many event loops as cores, at least one; a client NIO's default; CATENA_EVENT_LOOPS rules both")
    func eventLoopCount() {
        #expect(EventLoopTaskExecutor.loopCount(environment: [:], cores: 2, server: true) == 1)
        #expect(EventLoopTaskExecutor.loopCount(environment: [:], cores: 1, server: true) == 1)
        #expect(EventLoopTaskExecutor.loopCount(environment: [:], cores: 16, server: true) == 8)
        #expect(EventLoopTaskExecutor.loopCount(environment: [:], cores: 16, server: false) == nil)
        #expect(EventLoopTaskExecutor.loopCount(environment: ["CATENA_EVENT_LOOPS": "3"], cores: 2, server: true) == 3)
        #expect(EventLoopTaskExecutor.loopCount(environment: ["CATENA_EVENT_LOOPS": "3"], cores: 2, server: false) == 3)
        #expect(EventLoopTaskExecutor.loopCount(environment: ["CATENA_EVENT_LOOPS": "0"], cores: 4, server: true) == 2)
        #expect(EventLoopTaskExecutor.loopCount(environment: ["CATENA_EVENT_LOOPS": "many"], cores: 4, server: false) == nil)
    }
}

/// Counts flushes passing outward.
private final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame
    var count = 0
    func flush(context: ChannelHandlerContext) {
        count += 1
        context.flush()
    }
}
