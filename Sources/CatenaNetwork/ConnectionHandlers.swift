import CatenaCore
import CatenaWire
import NIOCore

/// The first handler of an accepted connection's pipeline: it lets bytes reach the frame decoder
/// only for frames its server's budget admitted (``RequestAdmissionState``), and stops reading
/// the socket while a frame waits — TCP backpressure instead of buffered memory.
///
/// It reads each frame's length from its 8-byte prefix (magic, length) and asks the connection's
/// ``ConnectionAdmission`` before passing any byte of it. The first frame (the hello, bounded by
/// the handshake limit) passes unasked; after it nothing passes until the server has decided how
/// the connection is metered (a client: every frame; a peer: none). Bytes that cannot be a frame
/// (wrong magic, an impossible length) pass unmetered, and the decoder refuses them. While a frame
/// waits, the gate holds at most the bytes of one socket read.
final class InboundGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let admission: ConnectionAdmission
    private let maxFrameSize: Int
    /// Bytes received and not yet passed on.
    private var held: ByteBuffer?
    /// Bytes of the current (admitted) frame still to pass.
    private var remaining = 0
    /// Frames whose first bytes passed.
    private var frames = 0
    /// The stream is not made of frames: everything passes (the decoder fails the connection).
    private var passThrough = false
    /// A frame waits (for admission, or for the end of the handshake).
    private var blocked = false
    /// A read was asked for while blocked.
    private var readPending = false
    private var context: ChannelHandlerContext?

    init(admission: ConnectionAdmission, maxFrameSize: Int) {
        self.admission = admission
        self.maxFrameSize = maxFrameSize
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loop = context.eventLoop
        let gate = NIOLoopBound(self, eventLoop: loop)
        admission.setWaker { loop.execute { gate.value.resume() } }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        closeIfUnclaimed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeIfUnclaimed()
        context.fireChannelInactive()
    }

    /// A connection whose handshake ended belongs to its server's handler, which closes its
    /// admission once it read its last frame: frames still buffered when the socket closed are
    /// delivered after, and stay counted until then. Before that, the gate closes it.
    private func closeIfUnclaimed() {
        if admission.mode == .handshake { admission.close() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if held == nil {
            held = incoming
        } else {
            held!.writeBuffer(&incoming)
        }
        pump(context)
    }

    func read(context: ChannelHandlerContext) {
        if blocked {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Woken: a waiting frame was admitted, or the handshake ended.
    private func resume() {
        guard let context, blocked else { return }
        if pump(context) {
            // Outside a read cycle: the async channel delivers what it got on read-complete.
            context.fireChannelReadComplete()
        }
    }

    /// Passes on every byte that may go; returns whether any did.
    @discardableResult
    private func pump(_ context: ChannelHandlerContext) -> Bool {
        guard var buffer = held else {
            unblock(context)
            return false
        }
        blocked = false
        var pass = 0
        scan: while pass < buffer.readableBytes {
            let available = buffer.readableBytes - pass
            if passThrough {
                pass += available
                break
            }
            if remaining > 0 {
                let n = min(remaining, available)
                remaining -= n
                pass += n
                continue
            }
            // A frame starts here: its magic as far as it arrived, then its length.
            let at = buffer.readerIndex + pass
            for i in 0..<min(4, available) where buffer.getInteger(at: at + i, as: UInt8.self) != UInt8(truncatingIfNeeded: Frame.magic >> (8 * UInt32(i))) {
                passThrough = true
                continue scan
            }
            guard available >= 8, let length32 = buffer.getInteger(at: at + 4, endianness: .little, as: UInt32.self) else { break }
            let length = Int(length32)
            guard length >= Frame.minimumSize, length <= maxFrameSize else {
                passThrough = true
                continue
            }
            if frames > 0 {
                switch admission.mode {
                case .handshake:
                    blocked = true
                    break scan
                case .unmetered:
                    break
                case .metered:
                    if admission.admit(bytes: length) == .waiting {
                        blocked = true
                        break scan
                    }
                }
            }
            frames += 1
            remaining = length
        }
        let passed = pass > 0
        if passed {
            let slice = buffer.readSlice(length: pass)!
            held = buffer.readableBytes > 0 ? buffer : nil
            context.fireChannelRead(wrapInboundOut(slice))
        } else {
            held = buffer
        }
        if !blocked { unblock(context) }
        return passed
    }

    private func unblock(_ context: ChannelHandlerContext) {
        blocked = false
        if readPending {
            readPending = false
            context.read()
        }
    }
}

/// Closes an established connection on which no frame passed, in either direction, for
/// `timeout`: it sends an error frame (`timeout`, request id 0) and closes. Sits between the
/// frame codec and the async channel, so it counts frames, not bytes: a peer trickling a frame
/// byte by byte is idle.
final class IdleConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias InboundOut = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private let timeout: TimeAmount
    private let onIdle: @Sendable () -> Void
    private var last = NIODeadline.now()
    private var timer: Scheduled<Void>?

    init(timeout: Duration, onIdle: @escaping @Sendable () -> Void) {
        self.timeout = .nanoseconds(max(1, timeout.nanosecondsClamped))
        self.onIdle = onIdle
    }

    func handlerAdded(context: ChannelHandlerContext) {
        last = .now()
        schedule(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        last = .now()
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        last = .now()
        context.write(data, promise: promise)
    }

    private func schedule(_ context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: last + timeout) {
            handler.value.check(bound.value)
        }
    }

    private func check(_ context: ChannelHandlerContext) {
        guard timer != nil, context.channel.isActive else { return }
        if NIODeadline.now() < last + timeout {
            schedule(context)
            return
        }
        timer = nil
        onIdle()
        let seconds = Double(timeout.nanoseconds) / 1e9
        let error = CatenaError(.timeout, "no frame for \(seconds) s: the idle connection is closed")
        context.writeAndFlush(wrapOutboundOut(Frame.error(error)), promise: nil)
        context.close(promise: nil)
    }
}
