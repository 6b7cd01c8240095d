//! Boxes given back empty: a pool whose boxes hold nothing while they wait.
//!
//! An exchange's box comes back to the join once its request was handled, while its contents
//! are in the caches (the live loop asks memory for a waiting exchange's every line a log line
//! ahead, `Joiner::prefetch_exchange`, and the request's row has just read it), and goes out
//! again with a later exchange, a log poll on, when it is not: 2,500 boxes of 360 bytes each
//! are more than a core's L2. Reusing a box that still held its old exchange dropped that
//! exchange then, reading its texts' every cache line, cold, to learn whether one owns memory.
//! Dropped as it comes back instead, the box waits empty, and the next exchange is written
//! into it without a read. (Callgrind's cache simulation, which models no prefetch, still
//! counts the drop's reads as misses, now where the box comes back; the reuse's became the
//! fetches of lines to write: `cargo xtask bench-instructions` prints reads and writes apart.)
use std::mem::MaybeUninit;

/// At most `max` boxes, each empty (its value dropped when given back).
pub(super) struct Spares<T> {
    boxes: Vec<Box<MaybeUninit<T>>>,
    max: usize,
}

impl<T> Spares<T> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            boxes: Vec::new(),
            max,
        }
    }

    /// Boxes waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Takes `b` back: its value is dropped now, and the box kept empty if there is room
    /// (freed otherwise).
    pub(super) fn give(&mut self, b: Box<T>) {
        if self.boxes.len() >= self.max {
            return;
        }
        let raw = Box::into_raw(b);
        // SAFETY: `raw` comes from a `Box<T>`: valid, aligned, its value initialised and owned
        // by nobody else. The value is dropped once, here, and never read again as a `T`; the
        // allocation is then owned by a `Box<MaybeUninit<T>>`, whose layout is `T`'s, so it is
        // freed (or written and handed out as a `Box<T>`, below) with the layout it was
        // allocated with.
        let empty = unsafe {
            std::ptr::drop_in_place(raw);
            Box::from_raw(raw.cast::<MaybeUninit<T>>())
        };
        self.boxes.push(empty);
    }

    /// `value` in a box: the last one given back when there is one (the likeliest still in
    /// the caches), a new one otherwise.
    pub(super) fn boxed(&mut self, value: T) -> Box<T> {
        match self.boxes.pop() {
            Some(b) => Box::write(b, value),
            None => Box::new(value),
        }
    }

    /// Where the box [`Spares::boxed`] would use next lies, if there is one.
    #[cfg(test)]
    pub(super) fn next_at(&self) -> Option<*const T> {
        self.boxes.last().map(|b| b.as_ptr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_value_is_dropped_once_when_its_box_comes_back_and_the_box_is_reused() {
        let first = Rc::new(());
        let mut spares = Spares::new(1);
        let b = Box::new(Rc::clone(&first));
        let at: *const Rc<()> = &*b;
        spares.give(b);
        // Dropped as it came back, not when the box is reused.
        assert_eq!(Rc::strong_count(&first), 1);
        assert_eq!(spares.next_at(), Some(at));
        let second = Rc::new(());
        let b = spares.boxed(Rc::clone(&second));
        assert!(std::ptr::eq(at, &*b), "the spare box was not reused");
        assert!(Rc::ptr_eq(&b, &second));
        assert_eq!(spares.len(), 0);
        drop(b);
        assert_eq!(Rc::strong_count(&second), 1);
        assert_eq!(Rc::strong_count(&first), 1);
    }

    #[test]
    fn beyond_its_bound_a_box_is_freed_with_its_value() {
        let v = Rc::new(());
        let mut spares = Spares::new(1);
        spares.give(Box::new(Rc::clone(&v)));
        spares.give(Box::new(Rc::clone(&v)));
        assert_eq!(spares.len(), 1);
        assert_eq!(Rc::strong_count(&v), 1);
        // The pool dropped with boxes in it frees them and drops nothing twice.
        drop(spares);
        assert_eq!(Rc::strong_count(&v), 1);
        // Empty: a new box.
        let mut spares = Spares::<Rc<()>>::new(0);
        spares.give(Box::new(Rc::clone(&v)));
        assert_eq!(spares.len(), 0);
        assert_eq!(Rc::strong_count(&v), 1);
        let b = spares.boxed(Rc::clone(&v));
        assert_eq!(Rc::strong_count(&v), 2);
        drop(b);
    }
}
