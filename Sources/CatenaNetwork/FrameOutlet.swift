import CatenaWire
import NIOCore
import Synchronization

/// Writes frames to a connection from any thread, without waiting: frames handed over before
/// the connection's event loop gets to them go out together, with one flush — one system call
/// for a burst of small frames instead of one each, and no task between the caller and the
/// event loop.
///
/// No backpressure: for frames whose number and size the caller bounds by other means — a
/// node's replies to the requests a connection admitted, a client's small requests (each waits
/// for its reply). Frames sent after the connection closed are dropped (the reading side sees
/// the close).
public final class FrameOutlet: Sendable {
    private let channel: any Channel
    private let pending = Mutex(Pending())

    private struct Pending: ~Copyable {
        var frames: [Frame] = []
        /// ``sendReplacing(_:)``'s frame, not yet written.
        var latest: Frame?
        var scheduled = false
    }

    /// An outlet over `channel`, whose pipeline encodes ``Frame``s.
    public init(_ channel: any Channel) {
        self.channel = channel
    }

    /// Queues `frame`; it is written and flushed on the event loop's next turn, with whatever
    /// else was queued by then, in the order queued.
    public func send(_ frame: Frame) {
        queue { $0.frames.append(frame) }
    }

    /// Queues `frame` in the outlet's one replaceable slot: a frame queued there before and not
    /// yet written is dropped for it. For messages of which only the latest matters (an
    /// acknowledgement through an LSN covers every earlier one): a burst of them between two
    /// turns of the event loop goes out as one frame. Written after the turn's other frames.
    public func sendReplacing(_ frame: Frame) {
        queue { $0.latest = frame }
    }

    /// Adds to what is pending and, unless a drain is scheduled already, schedules one.
    private func queue(_ add: (inout Pending) -> Void) {
        let schedule = pending.withLock { p in
            add(&p)
            defer { p.scheduled = true }
            return !p.scheduled
        }
        if schedule { channel.eventLoop.execute { self.drain() } }
    }

    private func drain() {
        var frames: [Frame] = []
        let latest: Frame? = pending.withLock { p in
            p.scheduled = false
            swap(&frames, &p.frames)
            defer { p.latest = nil }
            return p.latest
        }
        for frame in frames { channel.write(frame, promise: nil) }
        if let latest { channel.write(latest, promise: nil) }
        channel.flush()
    }
}
