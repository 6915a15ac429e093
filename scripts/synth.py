#!/usr/bin/env python3
"""Deterministic synthetic aftersales case generator for casetag.

Reads the taxonomy ids from data/taxonomy.yaml (a tiny built-in parser, no
PyYAML needed) and writes multi-turn buyer/agent/seller/system transcripts for
every leaf of the taxonomy (depth-3 leaves and depth-2 leaves), plus ~6%
out-of-scope cases whose label columns are all empty.

Only the standard library is used; all randomness comes from one
random.Random(seed), so the same arguments always give byte-identical output.

Usage:
  # the bundled corpus (train/val/test, stratified by leaf, 0.7/0.1/0.2)
  python3 scripts/synth.py --seed 7 --splits data/aftersales

  # one case-level CSV (id,text,l1,l2,l3,region,channel) to stdout or a file
  python3 scripts/synth.py --seed 1 --cases 1000 --out cases.csv

  # turn-level CSV (case_id,turn,speaker,text,l1,l2,l3,region,channel),
  # streamed row by row: ~1.2M turn rows
  python3 scripts/synth.py --seed 3 --format turn --cases 150000 --out turns.csv

Transcript format (case CSV `text` column): one turn per line,
"[speaker] utterance", speakers buyer, agent, seller, system; lines joined
with "\\n". For a depth-2 leaf `l3` is empty; for an out-of-scope case l1, l2
and l3 are all empty.
"""
import argparse
import csv
import io
import os
import re
import sys

# ============================================================== intent content
LEAVES = {
# ---------------------------------------------------------------- returns_refunds
"return_not_as_described": {
 "o": [
  "I want to return the {product} from order {order}. It looks nothing like the pictures on the listing.",
  "The {product} I got is not what was described. The listing said {colour} but it is clearly {colour2}. How do I send it back?",
  "hi, the item is not as described, the material is cheap plastic and the listing said metal. I'd like to return it",
  "Order {order}: the {product} is a completely different size than the one in the description. I need to return it please.",
  "The description said original with warranty and the box has no brand on it at all. I want to send the {product} back for a refund.",
  "I'd like to start a return. The {product} doesn't match the specs in the listing (it says 128GB, mine has 64GB).",
  "Can I return something that isn't what the seller advertised? The {product} is a different model.",
 ],
 "d": ["The listing photos show {colour} and a leather strap, what I received is {colour2} with a rubber one.",
       "I compared it with the listing, the dimensions are way smaller than stated.",
       "It's unused, still in the original packaging. I just want to return it because it's not what I ordered from the description.",
       "I can send photos of the item next to the listing screenshot."],
 "a": ["Since the item does not match the listing, the return is free for you. Could you upload a couple of photos first?",
       "I have started a not-as-described return; you will get a prepaid label by email."],
 "sel": ["The item is the same as the pictures, maybe the screen colour is different on your phone.",
         "Please send pictures, we will check with the warehouse."],
},
"return_changed_mind": {
 "o": [
  "Hi, I ordered the {product} but I changed my mind. Can I still return it?",
  "I don't need the {product} anymore, it's unopened. How do I return it?",
  "hello i bought {product} on {date} and i dont want it now, its fine nothing wrong with it. return possible?",
  "I'd like to send back order {order}. Nothing wrong with it, I just found I don't really need it.",
  "Bought this as a gift but the person already has one. Can I return the {product} for a refund?",
  "Is it possible to return an item just because I don't like it? It's the {product}, order {order}.",
  "Found it cheaper in a shop nearby so I'd like to return the {product}. It's still sealed.",
 ],
 "d": ["It's still within 30 days, I received it {days} days ago.",
       "The item works perfectly and matches the listing, I simply don't want it.",
       "I still have the box and all accessories.",
       "Do I have to pay the return postage if it's a change of mind?"],
 "a": ["As the item is within the 30 day return window you can return it. Change-of-mind returns may carry a return fee.",
       "I've generated a return label; please pack the item in its original packaging."],
},
"return_defective_item": {
 "o": [
  "The {product} I received doesn't work. I want to return it and get my money back.",
  "My {product} stopped working after {days} days. I'd like to return it for a refund please.",
  "Order {order} arrived broken, the screen doesn't turn on. I want a refund, not a replacement.",
  "the {product} is faulty, it won't charge at all. how do i return it",
  "Hi, the item is defective, there's a crack inside and it leaks. I want to return it.",
  "I want to send back the {product}, it makes a loud noise and then shuts off. Clearly defective.",
 ],
 "d": ["I tried a different cable and socket, still nothing.",
       "It was working the first day and then just died.",
       "I don't want another one, just the refund please.",
       "I can record a video showing the fault."],
 "a": ["I'm sorry the item is faulty. Please upload a photo or short video of the defect so we can approve the return.",
       "Defective items can be returned free of charge. Would you prefer a refund or a replacement?"],
 "s": ["[system] Return reason selected: item defective"],
},
"return_window_expired": {
 "o": [
  "The app says the return window for order {order} is closed but I only noticed the problem now. Can I still return it?",
  "I bought the {product} {days} days ago and the return button is gone. Is there any way to return it?",
  "Return period expired by 2 days, I was in hospital. Please make an exception for the {product}.",
  "can i return after 30 days? it says not eligible for return anymore",
  "I missed the return deadline for the {product}. Is it really too late?",
  "Why can't I return my order anymore? It was delivered on {date}, the return option disappeared.",
 ],
 "d": ["I know it's past the return date, I was travelling and couldn't send it back in time.",
       "It shows 'Return window closed on {date}'.",
       "The item is still new, I never used it."],
 "s": ["[system] Return eligibility: window closed", "[system] Order status: delivered, return window ended"],
 "a": ["Unfortunately the 30 day return window for this order has ended. Let me check whether an exception is possible."],
},
"refund_not_received": {
 "o": [
  "I returned the {product} on {date} and I still have not received my refund.",
  "Where is my refund?? The seller accepted the return {days} days ago and I got nothing.",
  "hi, order {order} was cancelled and the refund still hasn't come. it's been {days} days",
  "You told me the refund of {amount} would be issued in 3 days. It has been over a week and nothing.",
  "My refund never arrived. The return was delivered to the seller on {date} according to tracking.",
  "I still haven't gotten my money back for order {order}. Refund status says approved but nothing was paid.",
  "Still waiting for the refund for the {product}, please check what's going on.",
 ],
 "d": ["I checked my account and there is no refund at all, not even pending.",
       "The seller said they received the parcel but my refund hasn't been processed.",
       "It says refund approved but no money has been sent out yet.",
       "I need that {amount} back, I'm not waiting another week."],
 "s": ["[system] Refund status: approved, not yet issued", "[system] Return status: received by seller", "[system] Refund status: pending"],
 "a": ["I can see the refund was approved but not issued yet. I'm pushing it through now.",
       "I apologise for the delay with your refund. I'll check why it has not been issued."],
},
"refund_amount_wrong": {
 "o": [
  "I got a refund for order {order} but it's only {amount2}, I paid {amount}.",
  "The refund amount is wrong. I returned both items but was refunded for only one.",
  "why did i only get part of my money back? refund was {amount2} instead of {amount}",
  "My refund is short. You deducted a restocking fee that nobody told me about.",
  "I received the refund for the {product} but the amount doesn't match what I paid including shipping.",
  "Refund came through but it's less than expected, {amount2} short. Please fix.",
 ],
 "d": ["I paid {amount} in total with shipping and got back {amount2}.",
       "The seller refunded the item price but not the shipping fee.",
       "There is a deduction listed as 'usage fee', the item was unused.",
       "The refund did arrive, it's just the wrong amount."],
 "s": ["[system] Refund status: completed, partial amount", "[system] Refund issued: {amount2}"],
 "a": ["I can see a partial refund of {amount2} was issued. Let me check the deduction with the seller."],
 "sel": ["We deducted the cost because the packaging was damaged when it came back."],
},
"refund_wrong_method": {
 "o": [
  "My refund went to store credit but I paid by card. I want it back on my card.",
  "Why was my refund put into the wallet balance? I never asked for that.",
  "I got the refund for order {order} as a gift card, I want the money back to my original payment method.",
  "refund was sent to my old paypal instead of my credit card ending {card}",
  "The refund of {amount} went to my marketplace wallet. Can you move it to my bank card?",
  "I received a voucher instead of a refund. I want real money, not credit.",
 ],
 "d": ["I paid with my card ending {card}, the refund should go there.",
       "I can't use the wallet balance, I don't plan to shop here again.",
       "The refund did arrive but in the wrong place."],
 "s": ["[system] Refund method: store credit", "[system] Refund method: marketplace wallet"],
 "a": ["I see the refund was issued as store credit. Let me check if it can be moved to your card."],
},
"refund_rejected_by_seller": {
 "o": [
  "The seller rejected my refund request for no reason. The {product} is clearly faulty.",
  "Seller declined my refund for order {order} saying I damaged it. I did not.",
  "my refund request got rejected by the shop, what can i do?",
  "I asked for a refund and the seller {seller} refused. This isn't fair.",
  "Refund denied by the seller after I sent the item back. Now I have neither the item nor the money.",
  "The seller says the refund is rejected because I opened the box. How am I supposed to check it otherwise?",
 ],
 "d": ["The seller wrote 'refund request declined' and closed it.",
       "I have photos showing the item was damaged on arrival.",
       "I want someone from the platform to look at this."],
 "sel": ["Refund declined. Item shows signs of use.", "We do not accept refunds for opened products."],
 "s": ["[system] Refund request: declined by seller"],
},
"return_label_problem": {
 "o": [
  "I never received the return label for order {order}.",
  "The return label you sent doesn't work, the post office says the barcode is invalid.",
  "Where do I find my return label? The return was approved but there's no label.",
  "return label expired before i could drop off the parcel, can i get a new one",
  "The {carrier} shop refused my parcel because the return label is for the wrong country.",
  "I can't print the return label, the link gives an error.",
 ],
 "d": ["I checked spam and it's not there either, my email is {email}.",
       "The label says it expired on {date}.",
       "I don't have a printer, can I get a QR code instead?"],
 "a": ["I'll generate a new return label and send it to your email.",
       "Return labels are valid for 14 days; I'll issue a fresh one."],
},
"return_pickup_missed": {
 "o": [
  "The courier was supposed to pick up my return today and nobody came.",
  "I waited home all day for the return pickup and {carrier} never showed up.",
  "return pickup was booked for {date} between 9 and 12, no one came to collect it",
  "The pickup for my return of the {product} was missed twice now.",
  "Nobody collected the return parcel. It says pickup failed, but I was home!",
  "Can you rebook the collection? The driver didn't come for the return.",
 ],
 "d": ["I took the day off work for this pickup.",
       "The tracking says 'collection attempt failed' but there was no knock.",
       "Can they come tomorrow morning instead?"],
 "s": ["[system] Return pickup status: missed", "[system] Return pickup scheduled: {date}"],
},
"return_parcel_lost": {
 "o": [
  "I sent my return back {days} days ago and the seller says they never received it.",
  "The return parcel for order {order} is lost, tracking stopped at the depot.",
  "seller claims they didnt get my return but i have the drop off receipt",
  "My returned {product} seems to have vanished in transit. What now?",
  "The return shipment to the seller has been stuck for two weeks and {carrier} can't find it.",
  "I dropped off the return at {carrier} on {date}, the seller still has nothing.",
 ],
 "d": ["I have the receipt with tracking number {tracking}.",
       "The last scan of the return was on {date}.",
       "I don't want to lose my money because the courier lost the return."],
 "s": ["[system] Return tracking {tracking}: last scan {date}, in transit"],
 "sel": ["We have not received any parcel from you yet."],
},
"return_shipping_cost": {
 "o": [
  "Why do I have to pay for return shipping when the item was wrong?",
  "I was charged {amount2} for the return label. I thought returns were free.",
  "who pays for the return postage on order {order}?",
  "The return shipping fee was deducted from my refund, that's not fair.",
  "Return shipping costs more than the {product} itself! Can the seller cover it?",
  "Is the return label free or do I pay for it? It says {amount2} return fee.",
 ],
 "d": ["The return fee is {amount2}, which I don't think I should pay.",
       "The listing said free returns.",
       "I already paid for postage at the post office, can I get it back?"],
 "a": ["Return postage is free when the item is faulty or not as described; for change-of-mind returns the buyer usually pays."],
},
# ---------------------------------------------------------------- cancellations
"cancel_before_shipment": {
 "o": [
  "I need to cancel order {order}, I ordered the wrong {product} by mistake.",
  "Please cancel my order, it hasn't shipped yet.",
  "can u cancel the order i placed an hour ago",
  "I want to cancel my order for the {product} before it ships. I found a better deal.",
  "Hi, cancel order {order} please. I ordered it twice by accident.",
  "Is it too late to cancel? I just placed the order this morning.",
  "I'd like to cancel my purchase, the seller hasn't sent it yet.",
 ],
 "d": ["The status still says 'awaiting shipment'.",
       "It was ordered on {date}, it still hasn't been packed.",
       "Yes please cancel the whole order and refund me."],
 "s": ["[system] Order status: awaiting shipment", "[system] Order status: paid, not shipped"],
 "a": ["The order has not shipped yet, so I can cancel it for you right away."],
},
"cancel_after_shipment": {
 "o": [
  "I want to cancel order {order} but it already shipped. What can I do?",
  "The {product} has been sent already but I don't want it anymore. Can I cancel?",
  "can i still cancel, it says shipped already",
  "I tried to cancel but the button is greyed out because it's in transit. Please cancel it.",
  "Cancel my order please, I know it's with {carrier} already but I don't need it.",
  "Order shipped yesterday but I need to cancel, I'm moving abroad.",
 ],
 "d": ["Tracking says in transit with {carrier}.",
       "Can I just refuse the delivery?",
       "I don't want to wait for it to arrive and then return it."],
 "s": ["[system] Order status: shipped", "[system] Order status: in transit"],
 "a": ["Since the order has already shipped it can't be cancelled directly. You can refuse the delivery or return it once it arrives."],
},
"cancellation_pending": {
 "o": [
  "I requested a cancellation {days} days ago and it still says pending.",
  "My cancel request for order {order} is stuck, the seller hasn't approved it.",
  "cancellation still not confirmed, is my order cancelled or not??",
  "I cancelled the order on {date} but it still shows 'cancellation requested'.",
  "The cancellation has been pending for ages. Please just cancel it.",
  "Did my cancellation go through? I got no confirmation email.",
 ],
 "d": ["It says 'waiting for seller to respond to cancellation'.",
       "I don't want it to ship while this is pending.",
       "No confirmation email at {email}."],
 "s": ["[system] Cancellation status: requested, awaiting seller"],
},
"seller_cancelled_order": {
 "o": [
  "The seller cancelled my order without any explanation.",
  "Why did {seller} cancel order {order}? I still want the item.",
  "my order got cancelled by the seller, i didnt ask for that",
  "The seller cancelled my order and then relisted the same {product} at a higher price!",
  "Seller cancelled after 5 days of waiting. I want an explanation.",
  "I got an email that the seller cancelled my order. What happened?",
 ],
 "d": ["The reason just says 'cancelled by seller'.",
       "The listing is still up, so it's not out of stock.",
       "I waited all this time for nothing."],
 "s": ["[system] Order status: cancelled by seller"],
 "sel": ["Sorry, we had a pricing error and had to cancel."],
},
"out_of_stock_cancellation": {
 "o": [
  "My order was cancelled because the item is out of stock. When will it be back?",
  "Got a message that the {product} is sold out and my order is cancelled. Really?",
  "order cancelled out of stock, but the page still lets people buy it",
  "Seller says no stock for the {colour} one, so they cancelled order {order}.",
  "Why did you accept my order if the item was out of stock?",
  "The order was cancelled due to 'no inventory'. Do I get my money back automatically?",
 ],
 "d": ["The cancellation reason is 'out of stock'.",
       "Can I be notified when it's back in stock?",
       "I needed it for a birthday on {date}."],
 "s": ["[system] Order status: cancelled, reason out of stock"],
},
"cancel_membership": {
 "o": [
  "How do I cancel my Plus membership? I don't want it to renew.",
  "I want to cancel the shipping membership, I was charged {amount2} for renewal.",
  "please stop my membership auto renewal",
  "I signed up for the free trial of the membership and want to cancel before it charges me.",
  "Cancel my premium membership, I don't use it.",
  "Where is the option to end my membership? I can't find it in settings.",
 ],
 "d": ["The renewal date is {date}.",
       "I want to cancel, not pause.",
       "Can I get the last renewal back since I didn't use it?"],
 "s": ["[system] Membership: Plus, renews {date}"],
},
"cancel_repeat_delivery": {
 "o": [
  "I want to stop my repeat delivery of {product}.",
  "How do I cancel the subscribe and save order? It keeps coming every month.",
  "please cancel my monthly refill delivery",
  "I don't want the scheduled delivery next week, please stop the subscription for the {product}.",
  "The repeat order keeps shipping even though I turned it off.",
  "Cancel my recurring order for the {product}, every 4 weeks.",
 ],
 "d": ["Next delivery is scheduled for {date}.",
       "I have enough for months now.",
       "Please cancel all future deliveries."],
 "s": ["[system] Repeat delivery: every 4 weeks, next on {date}"],
},
# ---------------------------------------------------------------- logistics
"parcel_late": {
 "o": [
  "My order {order} was supposed to arrive on {date} and it's still not here.",
  "Where is my package? The estimated delivery date has passed.",
  "order is late, it said 3-5 days and it's been {days}",
  "The {product} was due yesterday. Any idea when it will arrive?",
  "Still waiting for my parcel, it is {days} days past the expected delivery.",
  "When will my order arrive? It's way overdue.",
  "Delivery was promised by Friday, nothing came.",
 ],
 "d": ["The tracking says out for delivery soon but it's been like this for days.",
       "I need it for an event on the weekend.",
       "The expected delivery was {date}."],
 "s": ["[system] Estimated delivery: {date}", "[system] Order status: shipped, in transit"],
 "a": ["I checked with {carrier}; the parcel is delayed at the sorting centre and should arrive within 2 days."],
},
"tracking_not_updating": {
 "o": [
  "The tracking for my order hasn't updated in {days} days.",
  "Tracking number {tracking} doesn't work on the {carrier} website.",
  "tracking stuck on 'label created' since {date}",
  "Is my parcel actually moving? Tracking shows the same status for a week.",
  "The tracking link says 'no information available' for order {order}.",
  "My tracking hasn't changed since it left the warehouse.",
 ],
 "d": ["The last update was {date}: 'Shipment information received'.",
       "I tried the number on {carrier} and it says not found.",
       "Is this normal or is it lost?"],
 "s": ["[system] Tracking {tracking}: label created", "[system] Tracking {tracking}: no scans for {days} days"],
},
"order_not_shipped": {
 "o": [
  "I ordered {days} days ago and the seller still hasn't shipped.",
  "Why is my order {order} still 'processing'? It should have shipped by now.",
  "its been a week and my order is still not sent",
  "The handling time was 2 days and the seller hasn't dispatched the {product} yet.",
  "My order hasn't even left the seller. What's going on?",
  "Status still says 'awaiting dispatch'. Is the seller ever going to ship it?",
 ],
 "d": ["It was paid on {date}.",
       "No tracking number yet.",
       "The seller doesn't answer either."],
 "s": ["[system] Order status: awaiting dispatch", "[system] Order status: paid, handling time exceeded"],
},
"parcel_lost": {
 "o": [
  "My parcel is lost. {carrier} says they can't find it.",
  "The package for order {order} has been missing for three weeks.",
  "courier confirmed the parcel is lost, what now",
  "Tracking says 'parcel lost in transit'. I want my {product} or my money.",
  "I think my order got lost, the last scan was in {city} on {date}.",
  "{carrier} opened an investigation and told me the package is lost.",
 ],
 "d": ["The last tracking event is 'exception: parcel cannot be located'.",
       "It's been {days} days with no movement.",
       "Can you resend it or refund me?"],
 "s": ["[system] Tracking {tracking}: exception, parcel not found", "[system] Carrier investigation: closed, parcel lost"],
 "a": ["I'm sorry, the carrier has confirmed the parcel is lost. I can resend the item or refund you."],
},
"delivered_not_received": {
 "o": [
  "Tracking says delivered but I never got my parcel.",
  "Order {order} shows delivered on {date} but there's nothing at my door.",
  "it says delivered but i didnt receive anything",
  "My package was marked as delivered but I was home all day and no one came.",
  "The app says the {product} was delivered. It wasn't. Where is it?",
  "Marked as delivered, not received. I checked with neighbours and the mailroom.",
 ],
 "d": ["I checked with my neighbours and the building reception.",
       "There's no photo of the delivery in the tracking.",
       "I was at home the whole time."],
 "s": ["[system] Order status: delivered", "[system] Tracking {tracking}: delivered {date}"],
 "a": ["I see the carrier marked it as delivered. I'll open an investigation with {carrier}."],
},
"delivery_attempt_failed": {
 "o": [
  "The courier says they tried to deliver but nobody was home. I was home!",
  "Delivery attempt failed for order {order}, now it's going back to the seller?",
  "it says address not accessible, delivery failed",
  "{carrier} left a note that they couldn't deliver. How do I get my {product}?",
  "Parcel is being returned to sender after a failed delivery attempt.",
  "They tried to deliver while I was at work. Can they try again tomorrow?",
 ],
 "d": ["The note says 'recipient not available'.",
       "The building has an intercom, they never rang.",
       "Can I add a phone number for the courier, {phone}?"],
 "s": ["[system] Tracking {tracking}: delivery attempt failed, recipient absent", "[system] Tracking {tracking}: returning to sender"],
},
"parcel_damaged_in_transit": {
 "o": [
  "My package arrived completely crushed and the {product} inside is broken.",
  "The box was soaking wet when it arrived and the item is ruined.",
  "parcel came damaged, box torn open, {product} is smashed",
  "The courier clearly dropped it, the box is dented and the glass is shattered.",
  "Order {order} arrived with a crushed box and a broken {product}.",
  "The shipping box was destroyed in transit and the item is damaged.",
 ],
 "d": ["I have photos of the box and the broken item.",
       "The outer box had a huge dent on one side.",
       "It was obviously the delivery, the item itself was fine before."],
 "a": ["I'm sorry it arrived damaged. Please share photos of the outer box and the item so we can file a claim with the carrier."],
},
"items_missing_from_parcel": {
 "o": [
  "My parcel arrived but one of the items is missing.",
  "I ordered 3 items and only 2 were in the box.",
  "the package came but the {product} wasn't inside",
  "Order {order} is incomplete, the charger is missing from the box.",
  "Received the parcel today, half the order is missing.",
  "The box was sealed but the {product} was not in it, only the packing slip.",
 ],
 "d": ["The packing slip lists the {product} but it wasn't there.",
       "The parcel weight on the tracking is lower than it should be.",
       "Is it coming in a separate package?"],
 "s": ["[system] Shipment: 1 parcel, weight 0.4 kg"],
},
"change_delivery_address": {
 "o": [
  "I put the wrong address on order {order}, can I change it?",
  "I need to update my delivery address, I moved last week.",
  "wrong street number on my order, pls change before it ships",
  "Can you change the shipping address? I want it delivered to my work instead.",
  "I selected my old address by mistake. The new one is in {city}.",
  "How do I edit the delivery address on an order I just placed?",
 ],
 "d": ["The correct address is 14 Park Lane, {city}.",
       "It hasn't shipped yet I think.",
       "My phone for the courier is {phone}."],
 "s": ["[system] Order status: awaiting shipment"],
 "a": ["As long as the parcel hasn't been handed to the carrier I can update the address."],
},
"delivered_to_wrong_address": {
 "o": [
  "My parcel was delivered to the wrong address.",
  "The delivery photo shows a door that isn't mine.",
  "courier delivered to a different house number",
  "Order {order} was signed for by someone I don't know at another address.",
  "The proof of delivery shows a totally different street.",
  "My {product} was left at the wrong building, the neighbour says it's not there.",
 ],
 "d": ["The tracking says delivered to '22B', I live at 12.",
       "The signature is a name I've never heard of.",
       "My address on the order is correct, I double checked."],
 "s": ["[system] Proof of delivery: photo attached, signed by 'M.'", "[system] Order status: delivered"],
},
"courier_misconduct": {
 "o": [
  "The delivery driver threw my parcel over the fence.",
  "The courier was extremely rude to me at the door.",
  "driver marked 'nobody home' without even ringing, i was watching from the window",
  "The {carrier} guy left my parcel in the rain on the street.",
  "The courier demanded extra cash to hand me the parcel.",
  "Your delivery person kicked the box and swore at me.",
 ],
 "d": ["I have doorbell camera footage.",
       "This is not the first time with this driver.",
       "I want a complaint filed against the courier."],
},
"customs_and_duties": {
 "o": [
  "My parcel is held at customs, what do I need to do?",
  "I'm being asked to pay {amount2} import duty on my order, nobody told me!",
  "customs fees for the {product}?? it said duties included",
  "{carrier} sent me a letter asking for customs charges before delivery.",
  "My order is stuck in customs clearance for {days} days.",
  "Why do I have to pay VAT and duties again when I already paid at checkout?",
 ],
 "d": ["The letter says duties of {amount2}.",
       "Tracking says 'held by customs, awaiting documents'.",
       "The listing said shipped from a local warehouse."],
 "s": ["[system] Tracking {tracking}: held at customs", "[system] Tracking {tracking}: duties payable"],
},
"pickup_point_problem": {
 "o": [
  "My parcel is at the pickup point but they can't find it.",
  "The locker code for my parcel doesn't work.",
  "pickup point was closed when i went, parcel will be returned tomorrow",
  "The parcel was sent to a pickup point I didn't choose, it's 20 km away.",
  "The parcel locker door didn't open and now it says collected.",
  "I went to the pickup point twice and they say my parcel isn't there.",
 ],
 "d": ["The collection code is 482913.",
       "The shop said the parcel was never dropped there.",
       "The locker is at the {city} station."],
 "s": ["[system] Tracking {tracking}: ready for collection at pickup point"],
},
# ---------------------------------------------------------------- exchange
"exchange_size": {
 "o": [
  "The {product} is too small, can I exchange it for a {size2}?",
  "I need a bigger size. I ordered {size} but it's tight.",
  "can i swap for a smaller size, these are way too big",
  "I'd like to exchange the {product} for size {size2} instead of {size}.",
  "Wrong size for me, I want the same item in {size2} please, not a refund.",
  "Does the seller do size exchanges? The {size} doesn't fit.",
 ],
 "d": ["I usually wear {size2}, the size chart was off.",
       "I still want the item, just in another size.",
       "It's unworn with tags."],
},
"exchange_colour_variant": {
 "o": [
  "Can I exchange the {product} for the {colour2} one?",
  "I'd like to swap my {colour} {product} for the {colour2} version.",
  "wrong colour for my room, can i exchange for {colour2}",
  "I ordered the 128GB model but want to exchange it for the 256GB, I'll pay the difference.",
  "Is it possible to change to a different model of the {product}? Same seller.",
  "I'd prefer the {colour2} variant instead. Can we do an exchange?",
 ],
 "d": ["The {colour2} one is in stock on the listing.",
       "I'm happy to pay the price difference.",
       "It's unopened."],
},
"wrong_item_received": {
 "o": [
  "I received the wrong item. I ordered a {product} and got something else.",
  "The seller sent me a completely different product.",
  "this isnt what i ordered, got a phone case instead of the {product}",
  "Order {order} contained someone else's item.",
  "Wrong product in the box. I need the {product} I paid for.",
  "You sent me the wrong model. The box says a different product number.",
 ],
 "d": ["The label on the box has a different product code.",
       "I can send a photo of what I got.",
       "I still need the correct {product}, please send it."],
 "sel": ["Sorry, mix-up in our warehouse. Please send a photo."],
},
"replacement_for_defective": {
 "o": [
  "My {product} is faulty, can you send me a replacement?",
  "The item stopped working, I'd like a new one instead of a refund.",
  "{product} broken out of the box, please replace it",
  "I want a working unit, not my money back. The one I got is defective.",
  "Can I get a replacement for order {order}? It doesn't turn on.",
  "The left earbud doesn't work. Please send a replacement pair.",
 ],
 "d": ["I really need the item, so a replacement is better than a refund.",
       "I tried resetting it, still dead.",
       "Can you send the new one before I return the broken one?"],
 "a": ["Please upload a photo or video of the fault and I'll request a replacement from the seller."],
},
"replacement_not_arrived": {
 "o": [
  "The seller agreed to send a replacement {days} days ago and it hasn't arrived.",
  "Where is my replacement? I sent back the faulty {product} already.",
  "replacement never shipped, still waiting",
  "I was promised a replacement for order {order} and there's no tracking.",
  "Still no replacement item. It's been two weeks.",
  "The replacement unit was supposed to ship on {date}. Nothing yet.",
 ],
 "d": ["The seller confirmed the replacement on {date}.",
       "I returned the original already.",
       "No tracking number was shared."],
 "s": ["[system] Replacement order created: {order}, status awaiting dispatch"],
},
"warranty_claim": {
 "o": [
  "My {product} broke after 8 months, it should still be under warranty.",
  "I want to make a warranty claim for the {product}.",
  "it has 1 year warranty and stopped working, how do i claim",
  "The warranty card says 2 years. The {product} died after 10 months.",
  "Is the seller responsible for the warranty or the manufacturer?",
  "I need a warranty repair, the hinge broke after normal use.",
 ],
 "d": ["I bought it on {date}.",
       "I have the invoice and the warranty card.",
       "It's well past the return window but still under warranty."],
},
"repair_status": {
 "o": [
  "I sent my {product} for repair three weeks ago, any update?",
  "What's the status of my repair?",
  "repair taking forever, when do i get my device back",
  "The service centre received my {product} on {date}, no news since.",
  "Is my repair finished? Case number {case}.",
  "My item has been at the repair centre for over a month.",
 ],
 "d": ["The repair ticket is {case}.",
       "They said 10 working days.",
       "I need it for work."],
 "s": ["[system] Repair ticket {case}: in diagnosis"],
},
# ---------------------------------------------------------------- disputes
"dispute_item_not_received": {
 "o": [
  "I want to open a dispute, my order never arrived.",
  "How do I file an item not received claim for order {order}?",
  "open a case pls, never got my package",
  "I want buyer protection for my order, it never came and the seller does nothing.",
  "Item not received after {days} days. I'd like to open a dispute.",
  "Can I start a claim? The {product} never showed up.",
 ],
 "d": ["The protection period ends on {date}.",
       "The seller keeps saying wait one more week.",
       "I want to open the dispute now."],
 "a": ["You can open an item-not-received dispute from the order page; I can also start it for you."],
},
"dispute_not_as_described": {
 "o": [
  "I want to open a dispute, the {product} is fake.",
  "The item is counterfeit, I want to file a not as described claim.",
  "open dispute, item is not original",
  "I'd like to start a buyer protection claim, what I received is nothing like the listing.",
  "How do I open a dispute for a significantly not as described item? Order {order}.",
  "Seller sold me a replica. I want to file a claim.",
 ],
 "d": ["The serial number doesn't exist on the brand's website.",
       "I have photos comparing it to the original.",
       "I want to open the dispute, not just a return."],
},
"dispute_status": {
 "o": [
  "What's the status of my dispute {case}?",
  "I opened a dispute {days} days ago, when will it be decided?",
  "any news on my claim?",
  "My case has been 'under review' for a week. How long does this take?",
  "Dispute for order {order} still open, what happens next?",
  "When will you make a decision on my buyer protection case?",
 ],
 "d": ["Case number is {case}.",
       "It was opened on {date}.",
       "I already gave all the information."],
 "s": ["[system] Dispute {case}: under review", "[system] Dispute {case}: awaiting platform decision"],
},
"dispute_evidence": {
 "o": [
  "How do I add photos to my open dispute?",
  "I want to upload more evidence for case {case}.",
  "where do i attach the video for my claim",
  "The dispute asks for proof, can I send the photos by email to you?",
  "I have a screenshot of the seller's message to add to the dispute.",
  "The upload in the dispute page keeps failing, I need to add my evidence.",
 ],
 "d": ["I have 4 photos and a video.",
       "The upload limit is too small for the video.",
       "My email is {email} if that's easier."],
 "s": ["[system] Dispute {case}: evidence requested from buyer"],
},
"seller_ignoring_dispute": {
 "o": [
  "The seller hasn't responded to my dispute in {days} days.",
  "Seller is ignoring my open case {case}.",
  "seller not answering the dispute at all",
  "The seller had 3 days to respond to my claim and did nothing.",
  "My dispute for order {order} is open but the seller never replies.",
  "The response deadline for the seller passed yesterday. What now?",
 ],
 "d": ["The seller's deadline was {date}.",
       "No message from the seller since the dispute was opened.",
       "Can you decide without them?"],
 "s": ["[system] Dispute {case}: seller response overdue"],
},
"request_arbitration": {
 "o": [
  "I want the platform to step in, the seller and I can't agree.",
  "Please escalate my dispute {case} to arbitration.",
  "i want marketplace to decide, seller is lying",
  "We've gone back and forth for a week. Can someone from the platform decide?",
  "Escalate this case please, the seller only offers {amount2} and that's not acceptable.",
  "I'd like to request a platform review of the dispute for order {order}.",
 ],
 "d": ["The seller offered {amount2} partial refund, I paid {amount}.",
       "I gave them all the evidence.",
       "I want an independent decision."],
 "sel": ["We offered a fair solution. The buyer refuses."],
},
"arbitration_outcome_question": {
 "o": [
  "The arbitration decided in my favour, when do I get the money?",
  "I don't understand the arbitration result on case {case}.",
  "what does 'decided: partial refund' mean",
  "The decision says I must return the item first. How?",
  "Arbitration closed the case, but what happens with my {product} now?",
  "The platform ruled for me. Does the seller have to pay or do you?",
 ],
 "d": ["The decision was on {date}.",
       "It says refund {amount2} after return.",
       "I just want to know the next steps."],
 "s": ["[system] Dispute {case}: closed, decided in buyer's favour", "[system] Dispute {case}: decided, partial refund"],
},
# ---------------------------------------------------------------- appeals
"appeal_dispute_decision": {
 "o": [
  "I want to appeal the decision on my dispute {case}. It's unfair.",
  "You closed my case in favour of the seller, I disagree.",
  "how do i appeal a dispute decision",
  "The arbitration went against me even though I sent photos. I want it reviewed again.",
  "Please reopen my dispute, the decision was wrong.",
  "The case was decided for the seller without looking at my evidence. Appeal please.",
 ],
 "d": ["The decision was made on {date}.",
       "I have new evidence that wasn't considered.",
       "The seller lied in their response."],
 "s": ["[system] Dispute {case}: closed, decided in seller's favour"],
},
"appeal_claim_denied": {
 "o": [
  "My damage claim was rejected, I want to appeal.",
  "Why was my buyer protection claim denied? I'd like it reconsidered.",
  "claim rejected, appeal",
  "My return claim for the {product} was declined by your team, please review it again.",
  "The claim for order {order} was denied with 'insufficient evidence'. I have more now.",
  "I want to contest the rejection of my claim.",
 ],
 "d": ["The rejection email came on {date}.",
       "I can upload clearer photos now.",
       "The reason given doesn't make sense."],
 "s": ["[system] Claim status: rejected, insufficient evidence"],
},
"account_restriction_appeal": {
 "o": [
  "My account has been suspended and I don't know why.",
  "I can't place orders, it says my account is restricted.",
  "account blocked after too many returns?? i want this reviewed",
  "Please review my account limitation, I didn't do anything wrong.",
  "My buyer account was locked for 'policy violation'. I want to appeal.",
  "Why is my account limited? I need to use it.",
 ],
 "d": ["The email said 'unusual return activity'.",
       "My account email is {email}.",
       "I've been a customer for 6 years."],
 "s": ["[system] Account status: restricted"],
},
"order_hold_appeal": {
 "o": [
  "My order {order} is on hold for a security review.",
  "Your fraud check blocked my purchase, it was really me.",
  "order held for verification since {date}",
  "Why was my order flagged? I paid with my own card.",
  "The order says 'under risk review'. Please release it.",
  "I got a message my order is held pending review. I need it soon.",
 ],
 "d": ["I can verify with my ID.",
       "The card ending {card} is mine.",
       "I ordered from a new address, maybe that's why."],
 "s": ["[system] Order status: on hold, risk review"],
},
"appeal_status": {
 "o": [
  "I submitted an appeal {days} days ago. Any update?",
  "How long does an appeal take?",
  "has my appeal been looked at yet",
  "I appealed the decision on {date} and have heard nothing.",
  "Is there a way to check the status of my appeal?",
  "Still waiting on the appeal outcome for case {case}.",
 ],
 "d": ["The appeal reference is {case}.",
       "I got an automatic email saying it was received.",
       "It's been more than a week."],
 "s": ["[system] Appeal {case}: submitted, in queue"],
},
# ---------------------------------------------------------------- compensation
"late_delivery_compensation": {
 "o": [
  "My order had guaranteed delivery by {date} and it came {days} days late. I want compensation.",
  "The delivery guarantee wasn't met, what compensation do I get?",
  "i paid for guaranteed delivery and it was late, compensate me",
  "Your on-time guarantee says I get a voucher if it's late. Mine was late.",
  "The {product} arrived after the guaranteed date, I'd like the compensation.",
  "Late delivery compensation please, order {order} missed the promised date.",
 ],
 "d": ["The guarantee date was {date}, it arrived 3 days later.",
       "I missed the event I needed it for.",
       "The parcel did arrive eventually, but late."],
 "s": ["[system] Delivery guarantee: missed", "[system] Order status: delivered"],
},
"shipping_fee_refund": {
 "o": [
  "I paid {amount2} for express shipping and it came with standard speed. I want the shipping fee back.",
  "Can I get a refund of the shipping cost? The express delivery was not express.",
  "refund my delivery fee pls, it took 10 days",
  "I was charged shipping twice on order {order}, can I get the shipping fee refunded?",
  "The listing said free shipping but I was charged {amount2}.",
  "Please refund the next-day delivery fee, it came a week later.",
 ],
 "d": ["The express fee was {amount2}.",
       "The item itself is fine, it's just the shipping fee.",
       "I don't want a voucher, just the fee back."],
},
"voucher_request": {
 "o": [
  "After all this trouble I think I deserve a voucher.",
  "Can you give me a discount code for the bad experience?",
  "any coupon for the inconvenience?",
  "This is the third problem order this month. I'd like some compensation.",
  "I spent hours on this. Is there a goodwill gesture?",
  "Can I get a voucher for my next order? The last one was a mess.",
 ],
 "d": ["The issue itself is solved, but it was a lot of hassle.",
       "I've been a loyal customer for years.",
       "A small voucher would be fine."],
},
"voucher_not_applied": {
 "o": [
  "The voucher code {voucher} doesn't work at checkout.",
  "You promised me a {amount2} voucher last week and I never got it.",
  "my coupon disappeared from my account",
  "The voucher says expired but it should be valid until {date}.",
  "The discount wasn't applied to order {order} even though I entered the code.",
  "Where is the compensation voucher the agent promised me?",
 ],
 "d": ["The code is {voucher}.",
       "It says 'not applicable to this item'.",
       "The agent promised it on {date}."],
},
"price_drop_protection": {
 "o": [
  "I bought the {product} for {amount} and two days later it's {amount2} cheaper.",
  "The price dropped right after I bought it. Can I get the difference?",
  "price went down after i ordered, refund the difference?",
  "Do you have price protection? The {product} is on sale now.",
  "I paid full price on {date} and now the same listing is discounted.",
  "Can you match the new lower price for my order {order}?",
 ],
 "d": ["It was {amount} when I ordered.",
       "The sale started the day after I ordered.",
       "Otherwise I'll return it and buy it again cheaper."],
},
"compensation_other": {
 "o": [
  "I want some kind of compensation for what happened.",
  "What compensation can I get for my case?",
  "I'd like to be compensated for the time I lost on this.",
  "do you offer any compensation at all?",
  "How is compensation decided on your platform?",
  "I think I'm owed something for this whole situation.",
 ],
 "d": ["I'm not sure what I can ask for, that's why I'm asking.",
       "Anything fair is fine.",
       "I had to take time off work for this."],
},
# ---------------------------------------------------------------- reviews
"remove_own_review": {
 "o": [
  "How do I delete a review I wrote?",
  "I want to remove my review on the {product}.",
  "pls delete my review, posted it on the wrong product",
  "Can you take down the review I left for {seller}?",
  "I'd like my review removed, I don't want my name on it.",
  "There's no delete button for my review, can you remove it?",
 ],
 "d": ["I posted it on {date}.",
       "It was on the wrong listing.",
       "I just want it gone."],
},
"edit_review": {
 "o": [
  "The seller fixed my problem, can I change my 1 star review?",
  "I want to update my rating to 5 stars now.",
  "how do i edit a review i already posted",
  "I'd like to edit my review for the {product}, it was resolved.",
  "Can I change the text of my review? I was too harsh.",
  "The edit option for my review is gone. I want to update it.",
 ],
 "d": ["The seller sent a replacement and it works.",
       "I want to change it from 1 star to 4 stars.",
       "The review is on order {order}."],
},
"report_fake_reviews": {
 "o": [
  "The reviews on this {product} listing are fake.",
  "I want to report fake reviews, they are all copy-paste.",
  "seller has hundreds of 5 star reviews from accounts with no history",
  "This listing's reviews are for a different product entirely.",
  "Half the reviews were posted on the same day with the same wording. Please check.",
  "I bought because of the reviews and it's junk. I think they're bought reviews.",
 ],
 "d": ["The listing is from {seller}.",
       "The review photos are stock images.",
       "Many reviewers have only one review ever."],
},
"incentivised_review_offer": {
 "o": [
  "The seller offered me a refund if I leave a 5 star review.",
  "{seller} sent a card in the box promising {amount2} for a positive review.",
  "seller wants me to delete my bad review and will pay me",
  "The seller is offering a free gift in exchange for a 5-star rating.",
  "I was promised cashback if I post a good review. Is that allowed?",
  "Seller says they'll refund the full amount if I change my review.",
 ],
 "d": ["I have a photo of the card.",
       "The message is in the chat.",
       "It says 'leave 5 stars and send screenshot'."],
 "sel": ["If you change your review to 5 stars we send you {amount2} back."],
},
"review_rejected": {
 "o": [
  "My review wasn't published. Why?",
  "You removed my honest review.",
  "review rejected for guidelines?? it was honest",
  "My review of the {product} disappeared.",
  "Why was my negative review not approved?",
  "My review keeps getting rejected when I submit it.",
 ],
 "d": ["It didn't have any bad words.",
       "I only described the problem with the item.",
       "It was submitted on {date}."],
 "s": ["[system] Review status: rejected by moderation"],
},
"seller_harassment_over_review": {
 "o": [
  "The seller keeps messaging me because of my negative review.",
  "After my 1 star review the seller is threatening me.",
  "seller found my phone number and calls me about the review",
  "The seller won't stop sending messages to make me change my review.",
  "I left an honest review and the seller is harassing me.",
  "The seller said they will report me if I don't remove my review.",
 ],
 "d": ["They messaged me 12 times since yesterday.",
       "They called me on {phone}.",
       "I feel unsafe."],
 "sel": ["Change your review now or we will take action."],
},
# ---------------------------------------------------------------- seller service
"cannot_contact_seller": {
 "o": [
  "How do I contact the seller? I can't find a message button.",
  "My messages to the seller won't send.",
  "contact seller button doesnt work",
  "There's no way to message {seller} on the order page.",
  "I keep getting an error when I try to chat with the seller.",
  "How can I reach the seller directly about my order?",
 ],
 "d": ["It says 'message could not be delivered'.",
       "I'm using the app on my phone.",
       "I need to ask about the {product}."],
},
"seller_offplatform_request": {
 "o": [
  "The seller asked me to pay via bank transfer instead of on the site.",
  "Seller wants me to message on WhatsApp, is that ok?",
  "seller said cancel the order and buy directly from him cheaper",
  "The seller sent me a payment link outside the marketplace.",
  "{seller} asked for my personal email to continue the deal off the app.",
  "Seller asked me to send money directly to get faster shipping.",
 ],
 "d": ["He gave me his number {phone}.",
       "The message said it's cheaper without the platform fee.",
       "Is this a scam?"],
 "sel": ["Pay by bank transfer and I give 10% discount."],
},
"seller_not_replying": {
 "o": [
  "The seller isn't replying to my messages.",
  "I've messaged {seller} {days} times and no answer.",
  "seller ignoring me for a week",
  "I have a question about my order {order} and the seller never responds.",
  "The seller read my message and didn't answer.",
  "How long do sellers have to answer? Still nothing.",
 ],
 "d": ["My first message was on {date}.",
       "It's just a question about the {product}.",
       "Can you contact them?"],
},
"seller_no_invoice": {
 "o": [
  "I need an invoice for my order and the seller won't send one.",
  "The seller hasn't sent the VAT invoice I requested.",
  "i need a receipt for work, seller doesnt give it",
  "How do I get a proper invoice for order {order}?",
  "I asked {seller} for an invoice with my company details twice.",
  "No invoice in the package and the seller ignores my request.",
 ],
 "d": ["I need it for my company expenses.",
       "Company name and VAT number are in the chat.",
       "I asked on {date}."],
},
"seller_rude": {
 "o": [
  "The seller was really rude to me.",
  "The seller insulted me in the chat.",
  "seller called me stupid for asking a question",
  "The seller's replies are aggressive and disrespectful.",
  "I asked a simple question and {seller} told me to get lost.",
  "I want to report the seller for their attitude.",
 ],
 "d": ["It's all in the order chat.",
       "They wrote in capital letters and swore.",
       "I just asked about the delivery."],
 "sel": ["Stop wasting my time. Read the description."],
},
"seller_false_promise": {
 "o": [
  "The seller promised a free gift with my order and didn't include it.",
  "The seller said it would ship in 1 day, it took 10.",
  "seller promised discount next order, never honoured it",
  "The seller promised to send the missing part and never did.",
  "{seller} said they would refund the shipping and didn't.",
  "The seller agreed to a price in chat then charged more.",
 ],
 "d": ["The promise is in the chat on {date}.",
       "They said 'we will send it tomorrow'.",
       "I feel cheated."],
},
# ---------------------------------------------------------------- payments
"double_charge": {
 "o": [
  "I was charged twice for order {order}.",
  "There are two identical charges of {amount} on my card.",
  "double charged!! fix it",
  "My bank shows the payment twice for the same order.",
  "I paid once but you took {amount} two times.",
  "Duplicate charge on my credit card ending {card}.",
 ],
 "d": ["Both charges are on {date}.",
       "I only have one order in my account.",
       "Card ending {card}."],
 "s": ["[system] Payments on order: 2 captures of {amount}"],
},
"charged_after_cancellation": {
 "o": [
  "I cancelled order {order} but I was still charged.",
  "Why was my card charged for a cancelled order?",
  "order cancelled but money taken",
  "The order was cancelled by the seller and I still see the charge of {amount}.",
  "You charged me after I cancelled.",
  "My cancelled order still took the payment.",
 ],
 "d": ["The cancellation confirmation came on {date}.",
       "The charge is {amount}.",
       "It's not a pending hold, it's a completed charge."],
 "s": ["[system] Order status: cancelled", "[system] Payment: captured {amount}"],
},
"unrecognised_charge": {
 "o": [
  "There's a charge from your marketplace on my card I don't recognise.",
  "What is this {amount} charge? I didn't order anything.",
  "unknown payment from you on my bank statement",
  "I see a charge of {amount} with your name and I have no such order.",
  "Someone used my card on your site?",
  "What's this charge on {date}? Not mine.",
 ],
 "d": ["The statement says 'MKTPLACE*ORDER'.",
       "My card ends in {card}.",
       "I don't see any order in my account for that amount."],
},
"payment_failed": {
 "o": [
  "My payment keeps failing at checkout.",
  "The card was declined but my bank says it's fine.",
  "payment error when i try to pay",
  "I can't pay for my order, it says 'transaction failed'.",
  "Payment didn't go through with my card ending {card}.",
  "Checkout says payment declined, tried three cards.",
 ],
 "d": ["Error code 'PAY-402'.",
       "I have enough money on the card.",
       "I tried with the app and the website."],
 "s": ["[system] Payment attempt: declined"],
},
"payment_pending": {
 "o": [
  "My payment has been pending for two days.",
  "Order {order} says 'payment processing', is it confirmed?",
  "payment stuck pending",
  "The money left my account but the order still says awaiting payment.",
  "How long does payment verification take?",
  "Payment is still pending, and the order isn't confirmed.",
 ],
 "d": ["I paid by bank transfer on {date}.",
       "My bank shows the money was sent.",
       "Will the order be cancelled automatically?"],
 "s": ["[system] Payment status: pending", "[system] Order status: awaiting payment"],
},
"card_refund_not_on_statement": {
 "o": [
  "Your site says the refund to my card is done but my bank doesn't show it.",
  "The refund status says completed but it's not on my card statement.",
  "refund shows completed on your side, not on my bank",
  "I got the refund confirmation email with a reference number but no money on my card.",
  "My bank says there's no incoming refund but you say it was sent.",
  "Refund marked as completed {days} days ago, still not visible on my card.",
 ],
 "d": ["The refund reference is ARN 7423{card}8816.",
       "My bank told me to ask you for the reference number.",
       "Card ending {card}."],
 "s": ["[system] Refund status: completed to card ending {card}", "[system] Refund status: completed, ARN provided"],
 "a": ["The refund left us on {date}. Banks can take 5 to 10 business days to show it; here is the reference for your bank."],
},
"refund_to_closed_card": {
 "o": [
  "The refund went to my old card that I closed.",
  "My card expired, where does the refund go now?",
  "refund sent to a card i dont have anymore",
  "My bank replaced my card and the refund was sent to the old one.",
  "I cancelled that credit card last month, how do I get the refund?",
  "The refund of {amount} went to an expired card ending {card}.",
 ],
 "d": ["The old card ended in {card}.",
       "The bank says the account is closed.",
       "Can you send it to my new card?"],
},
}

OOS = [
 "Hi, are you hiring? I'd like to apply for a job in your warehouse.",
 "How do I become a seller on your marketplace?",
 "I forgot my password and the reset email doesn't arrive.",
 "Can you tell me if the {product} supports fast charging before I buy it?",
 "Do you sell gift cards for other stores?",
 "hello how are you today",
 "What's the weather like where you are?",
 "CLICK HERE to win a free iPhone!!! www.free-prize-now.example",
 "Earn 5000 dollars a week from home, contact me now",
 "I have a question about my car insurance policy.",
 "Can I book a flight through your app?",
 "My food delivery from your restaurant partner was cold.",
 "Is your company listed on the stock exchange?",
 "What are your office opening hours?",
 "Do you have a student discount for the streaming service?",
 "I'd like to partner with you for an influencer campaign.",
 "Can you recommend a good laptop for gaming?",
 "How do I change the language of the app?",
 "test test",
 "I want to know when the next big sale event starts.",
 "Is there a physical store in {city}?",
 "My mobile phone plan bill is wrong.",
 "Can you help me with my tax return?",
 "I'm writing a school project about online shopping, can I ask some questions?",
 "How do I update my notification settings?",
 "What's the best way to sell my old phone?",
 "Are your products vegan?",
 "I'd like to unsubscribe from marketing emails.",
]
OOS_FOLLOW = [
 "just wondering", "thanks", "ok", "it's kind of urgent", "can you just tell me",
 "nobody else answers me", "I don't have an order, it's a general question",
]
OOS_AGENT = [
 "This channel handles questions about orders placed on the marketplace. For this request please visit our help centre.",
 "I'm afraid I can't help with that here. Is there anything about an order I can help you with?",
 "That's outside what our aftersales team covers, sorry.",
 "I don't have information about that. Do you have a question about an existing order?",
]


# ============================================================== taxonomy
def load_taxonomy(path):
    """Return {leaf_id: (l1, l2, l3)} parsed from the `nodes:` section.

    Node lines look like `<indent>- id: name`; depth is given by indent order.
    Action entries (`- {id: x}` / `- x`) do not match the node pattern.
    """
    leaves, stack, in_nodes = {}, [], False
    node_re = re.compile(r"^(\s*)- id:\s*([A-Za-z0-9_]+)\s*$")
    name_re = re.compile(r"^\s*name:\s*(.+?)\s*$")
    last = None
    children_of = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("nodes:"):
                in_nodes = True
                continue
            if not in_nodes:
                continue
            m = node_re.match(line)
            if not m:
                n = name_re.match(line)
                if n and last and last not in NAMES:
                    NAMES[last] = n.group(1)
                continue
            last = m.group(2)
            indent, nid = len(m.group(1)), m.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path_ids = [s[1] for s in stack] + [nid]
            if stack:
                children_of.setdefault(stack[-1][1], []).append(nid)
            stack.append((indent, nid))
            children_of.setdefault(nid, [])
            leaves[nid] = tuple(path_ids)
    out = {}
    for nid, p in leaves.items():
        if not children_of[nid] and len(p) >= 2:
            out[nid] = (p + ("", "", ""))[:3]
    return out


# ============================================================== slot values
PRODUCTS = [
    "wireless earbuds", "running shoes", "air fryer", "phone case", "smartwatch", "winter jacket",
    "coffee grinder", "LED desk lamp", "bluetooth speaker", "yoga mat", "kids' bicycle helmet",
    "robot vacuum", "mechanical keyboard", "hair dryer", "backpack", "kitchen knife set",
    "gaming mouse", "baby stroller", "electric toothbrush", "sofa cushion covers", "tablet",
    "USB-C charger", "denim jeans", "dress", "perfume", "blender", "camping tent", "office chair",
    "power bank", "sunglasses", "handbag", "football boots", "4K monitor", "e-reader",
    "vacuum flask", "wall clock", "dash cam", "curtains", "bed sheets", "sneakers",
]
COLOURS = ["black", "white", "navy", "red", "beige", "green", "grey", "pink", "silver", "blue"]
SIZES = ["XS", "S", "M", "L", "XL", "38", "40", "42", "44", "9", "10", "11"]
SELLERS = ["TechZone Store", "HomeStyle Outlet", "BestDeals88", "Nordic Living", "ShoeCity Official",
           "GadgetHub", "FashionCorner", "MegaMart Seller", "KitchenPro", "EverydayBuy", "Luna Boutique"]
CARRIERS = {
    "EU": ["DHL", "DPD", "GLS", "PostNL", "Hermes", "Colissimo"],
    "US": ["UPS", "USPS", "FedEx", "OnTrac"],
    "APAC": ["J&T Express", "SF Express", "Australia Post", "Ninja Van", "Yamato"],
    "LATAM": ["Correios", "Estafeta", "Servientrega", "Andreani"],
}
CITIES = {
    "EU": ["Berlin", "Madrid", "Lyon", "Rotterdam", "Milan", "Warsaw"],
    "US": ["Chicago", "Austin", "Denver", "Atlanta", "Seattle"],
    "APAC": ["Singapore", "Sydney", "Osaka", "Manila", "Kuala Lumpur"],
    "LATAM": ["Sao Paulo", "Mexico City", "Bogota", "Buenos Aires", "Lima"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
FIRST = ["anna", "john", "maria", "li.wei", "carlos", "sofia", "tom", "aisha", "kenji", "lucas", "emma", "raj"]
MAILDOM = ["gmail.com", "outlook.com", "yahoo.com", "mail.example.org", "proton.me"]


def money(rng, region, lo=8.0, hi=480.0):
    v = round(rng.uniform(lo, hi), 2)
    if region == "EU":
        return rng.choice(["€{:.2f}".format(v), "{:.2f} EUR".format(v).replace(".", ","), "EUR {:.2f}".format(v)]), v
    if region == "US":
        return rng.choice(["${:.2f}".format(v), "USD {:.2f}".format(v), "{:.2f} dollars".format(v)]), v
    if region == "APAC":
        c = rng.choice(["S$", "A$", "¥", "RM "])
        if c == "¥":
            return "¥{:,}".format(int(v * 100)), v
        return "{}{:.2f}".format(c, v), v
    return rng.choice(["R$ {:.2f}".format(v).replace(".", ","), "MXN {:.0f}".format(v * 18), "${:.2f} USD".format(v)]), v


def money_of(region, v, rng):
    return money(rng, region, v, v)[0]


def make_slots(rng, region):
    amount_str, v = money(rng, region)
    amount2 = money_of(region, round(v * rng.uniform(0.1, 0.7), 2), rng)
    n = rng.randrange(10_000_000, 99_999_999)
    order = rng.choice(["#MP2026-{}".format(n), "MP2026-{}".format(n), "#MP2025-{}".format(n),
                        "{}".format(n), "no. MP2026-{}".format(n)])
    colour, colour2 = rng.sample(COLOURS, 2)
    size, size2 = rng.sample(SIZES, 2)
    day = rng.randint(1, 28)
    month = rng.choice(MONTHS)
    date = rng.choice(["{} {}".format(month, day), "{} {}".format(day, month), "{:02d}/{:02d}".format(day, MONTHS.index(month) + 1),
                       "last Monday", "the {}th".format(day if day > 3 and day < 21 else 12), "2026-{:02d}-{:02d}".format(MONTHS.index(month) + 1, day)])
    name = rng.choice(FIRST)
    email = "{}{}@{}".format(name, rng.randint(1, 999) if rng.random() < 0.6 else "", rng.choice(MAILDOM))
    phone = rng.choice(["+49 151 {} {}".format(rng.randint(1000, 9999), rng.randint(1000, 9999)),
                        "+1 ({}) {}-{}".format(rng.randint(200, 989), rng.randint(200, 999), rng.randint(1000, 9999)),
                        "+65 {} {}".format(rng.randint(8000, 9999), rng.randint(1000, 9999)),
                        "+55 11 9{}-{}".format(rng.randint(1000, 9999), rng.randint(1000, 9999))])
    return {
        "order": order, "product": rng.choice(PRODUCTS), "amount": amount_str, "amount2": amount2,
        "date": date, "days": str(rng.randint(3, 21)), "carrier": rng.choice(CARRIERS[region]),
        "tracking": rng.choice(["1Z{}{}".format(rng.randint(100000, 999999), rng.randint(1000000, 9999999)),
                                "JD01{}".format(rng.randint(10**11, 10**12 - 1)),
                                "LX{}CN".format(rng.randint(10**8, 10**9 - 1))]),
        "card": str(rng.randint(1000, 9999)), "email": email, "phone": phone,
        "seller": rng.choice(SELLERS), "size": size, "size2": size2, "colour": colour, "colour2": colour2,
        "voucher": "SAVE{}{}".format(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ"), rng.randint(10, 99)),
        "city": rng.choice(CITIES[region]), "case": "DSP-{}".format(rng.randint(100000, 999999)),
        "name": name.split(".")[0].capitalize(),
    }


def fill(t, slots):
    return t.format(**slots)


# ============================================================== style pieces
GREET_AGENT = [
    "Thank you for contacting Marketplace customer support. My name is {agent}, how can I help you today?",
    "Hi, you're chatting with {agent} from Marketplace support. How can I help?",
    "Hello {name}, thanks for reaching out to Marketplace aftersales. What can I do for you?",
    "Welcome to Marketplace support, {agent} here. How may I assist you?",
    "Hi there! Thanks for your patience. I'm {agent}, how can I help?",
]
EMAIL_GREET_AGENT = [
    "Dear {name}, thank you for contacting Marketplace customer support.",
    "Dear customer, thank you for your email. We have received your request and {agent} will assist you.",
]
AGENT_NAMES = ["Sarah", "Miguel", "Priya", "Jonas", "Mei", "Daniel", "Fatima", "Alex", "Chloe", "Ravi"]
AGENT_ASK = [
    "I'm sorry to hear that. Could you please share your order number?",
    "I understand. Can you tell me a bit more about what happened?",
    "Thank you for the details. Let me check the order for you, one moment please.",
    "Could you confirm the order number and the email on the account?",
    "I'm sorry for the inconvenience. Let me look into this.",
    "Thanks. Can you give me a few more details so I can help?",
    "Let me pull up your order. Please bear with me.",
]
AGENT_CLOSE = [
    "I have updated your case. Is there anything else I can help you with?",
    "You will receive an email confirmation shortly. Thank you for your patience.",
    "I've escalated this to the responsible team; you'll hear back within 48 hours.",
    "Thank you for contacting Marketplace support. Have a great day!",
    "Is there anything else I can do for you today?",
    "I've added a note to your case so any colleague can see the history.",
    "Thanks for waiting. I've taken care of the next step on our side.",
]
BUYER_CLOSE = ["ok thanks", "Thank you!", "fine.", "ok", "Thanks for your help.", "great, thank you so much",
               "alright", "I hope so.", "ok, I'll wait then", "thx", "That's all, bye."]
NOISE = ["hello?", "are you there", "Hello??", "hi", "???", "still there?", "sorry, connection dropped",
         "one sec", "...", "ok", "yes", "hmm"]
POLITE_PRE = ["Hello, I hope you're well. ", "Good morning! ", "Hi there, ", "Hello, ", "Hi, sorry to bother you. ",
              "Dear support, ", ""]
ANGRY_PRE = ["This is ridiculous. ", "I'm really angry. ", "Unacceptable!! ", "Worst service ever. ",
             "Third time I'm writing about this. ", "Seriously?? ", ""]
ANGRY_POST = [" I want this fixed NOW.", " Terrible.", " I'm going to report this.", " Never buying here again!!",
              " Answer me.", ""]
POLITE_POST = [" Thank you in advance!", " Many thanks.", " Thanks a lot.", " Kind regards.", ""]
VAGUE = [
    "Hi, I have a problem with my order {order}.",
    "Hello, I need help with an order please.",
    "hi i have an issue",
    "Something went wrong with my purchase from {seller}.",
    "I need to talk to someone about order {order}.",
    "Hello, question about my recent order.",
    "My order from {date} - there's a problem.",
    "Hi, it's about the {product} I bought.",
]
ASIDE_PRE = ["Also, separate thing but not urgent: ", "By the way, last time ", "Oh and on another order earlier ",
             "(Not the main issue, but previously ", "Side note, a while ago "]
ASIDE_POST = ["", " but that one is sorted now.", " but forget that, it's resolved.", " anyway that's old news.)",
              " - never mind that, it got fixed."]


def wrap_register(rng, text, register, C):
    if register == "angry":
        return rng.choice(C.ANGRY_PRE) + text + rng.choice(C.ANGRY_POST)
    if register == "polite":
        if C.LANG == "en" and text[:2].lower() in ("hi", "he", "de", "go"):
            return text + rng.choice(C.POLITE_POST)
        return rng.choice(C.POLITE_PRE) + text + rng.choice(C.POLITE_POST)
    return text


KEYB = "qwertyuiopasdfghjklzxcvbnm"


def typo(rng, text, rate):
    if rate <= 0:
        return text
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < rate:
            j = rng.randrange(len(w) - 1)
            op = rng.randrange(4)
            if op == 0:
                w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
            elif op == 1:
                w = w[:j] + w[j + 1:]
            elif op == 2:
                w = w[:j] + w[j] + w[j:]
            else:
                k = KEYB.find(w[j].lower())
                if k >= 0:
                    w = w[:j] + KEYB[(k + 1) % len(KEYB)] + w[j + 1:]
            words[i] = w
    return " ".join(words)


PARAPHRASE = [
    (r"\bparcel\b", ["package", "packet", "parcel", "box"]),
    (r"\bpackage\b", ["parcel", "package", "delivery"]),
    (r"\bseller\b", ["seller", "shop", "vendor", "store", "merchant"]),
    (r"\bitem\b", ["item", "product", "thing", "article"]),
    (r"\bI want\b", ["I want", "I'd like", "I need", "I wish"]),
    (r"\bI'd like\b", ["I'd like", "I want", "I would like"]),
    (r"\breceived\b", ["received", "got", "gotten"]),
    (r"\bphotos\b", ["photos", "pictures", "pics", "images"]),
    (r"\bmy order\b", ["my order", "my purchase", "the order", "what I ordered"]),
    (r"\bdoesn't work\b", ["doesn't work", "is not working", "is dead", "won't work"]),
    (r"\bbroken\b", ["broken", "busted", "wrecked"]),
    (r"\bstill\b", ["still", "", "yet again"]),
    (r"\bplease\b", ["please", "pls", "plz", "kindly", ""]),
    (r"\bHow do I\b", ["How do I", "How can I", "What do I do to", "How to"]),
    (r"\bWhy\b", ["Why", "How come"]),
    (r"\bmoney\b", ["money", "cash", "funds"]),
    (r"\bdays\b", ["days", "days now", "whole days"]),
    (r"\bcontact\b", ["contact", "reach", "get hold of"]),
    (r"\bwrong\b", ["wrong", "incorrect", "not right"]),
    (r"\bcan't\b", ["can't", "cannot", "am unable to"]),
]
PARAPHRASE = [(re.compile(a), b) for a, b in PARAPHRASE]


def paraphrase(rng, text, p):
    for rx, alts in PARAPHRASE:
        if rng.random() < p and rx.search(text):
            text = rx.sub(lambda m: rng.choice(alts), text)
    return re.sub(r"  +", " ", text).strip()


GENERIC_L2 = [
    "I have an issue with {x} for order {order}.",
    "Hi, question about {x}.",
    "hello, need help - {x}",
    "It's about {x}, order {order}.",
    "Writing about {x} on my recent purchase.",
    "Hello, this is a {x} matter.",
]


def lower_app(rng, text, channel):
    if channel == "app" and rng.random() < 0.35:
        return text.lower().rstrip(".")
    return text


# ============================================================== languages and markets
# Set by --langs: cases carry a language, a market and a `lang` column. The
# default English corpus never takes these paths, so it stays as it was.
MULTI = False
MIX_SHARE = 0.2
SELLER_ADD = ["Let me add the seller to this conversation.", "I've asked the seller to respond here."]
SELLER_GENERIC = ["Hello, we are checking.", "Please wait for our reply.", "Dear buyer, thank you for your patience."]
AMBIG_PRE = "Or maybe it's more that "
# A buyer giving a national id or a phone number (multilingual corpus only):
# exercises PII masking with each market's formats.
ID_LINE = {
    "en": ["My ID number is {idno}, in case you need to verify me.", "For verification: ID {idno}."],
    "id": ["NIK saya {idno} kak, buat verifikasi.", "No KTP: {idno}"],
    "th": ["เลขบัตรประชาชนของฉันคือ {idno} ค่ะ", "เลขประจำตัวประชาชน {idno} ครับ"],
    "vi": ["Số CCCD của em là {idno} ạ.", "CCCD: {idno}"],
    "es": ["Mi número de identificación es {idno}, por si lo necesitan.", "Documento: {idno}"],
    "zh": ["我的身份证号是 {idno}。", "身份证号码：{idno}"],
}
PHONE_LINE = {
    "en": ["You can call me on {phone}.", "My number is {phone}, please call me."],
    "id": ["Bisa hubungi saya di {phone} ya kak.", "Nomor HP saya {phone}"],
    "th": ["โทรหาฉันได้ที่ {phone} ค่ะ", "เบอร์โทรของผม {phone} ครับ"],
    "vi": ["Shop gọi em số {phone} nhé.", "Số điện thoại của em là {phone}"],
    "es": ["Pueden llamarme al {phone}.", "Mi teléfono es {phone}"],
    "zh": ["可以打我电话 {phone}。", "我的手机号是 {phone}"],
}
# Markets each language is written in (the `region` column of the multilingual corpus).
MARKETS = {"en": ["US", "UK", "SG", "PH"], "id": ["ID"], "th": ["TH"], "vi": ["VN"], "es": ["ES", "MX"],
           "zh": ["CN", "SG", "MY"]}
MONEY_REGION = {"US": "US", "UK": "EU", "SG": "APAC", "PH": "APAC", "ID": "APAC", "TH": "APAC", "VN": "APAC",
                "ES": "EU", "MX": "LATAM", "CN": "APAC", "MY": "APAC"}


def digits(rng, n):
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


# Per market: currency (format, scale to the local unit), carriers, cities,
# phone numbers and national id numbers in the shapes people write them.
MARKET = {
    "US": ("${:.2f}", 1, ["UPS", "USPS", "FedEx"], ["Chicago", "Austin", "Seattle"]),
    "UK": ("£{:.2f}", 0.8, ["Royal Mail", "Evri", "DPD"], ["London", "Leeds", "Bristol"]),
    "SG": ("S${:.2f}", 1.3, ["Ninja Van", "SingPost", "J&T Express"], ["Singapore", "Jurong", "Tampines"]),
    "PH": ("₱{:,.0f}", 56, ["LBC", "J&T Express", "Ninja Van"], ["Manila", "Cebu", "Davao"]),
    "ID": ("Rp {:,.0f}", 15500, ["J&T Express", "JNE", "SiCepat", "AnterAja"], ["Jakarta", "Surabaya", "Bandung"]),
    "TH": ("฿{:,.0f}", 35, ["Kerry Express", "Flash Express", "Thailand Post"], ["กรุงเทพ", "เชียงใหม่", "ขอนแก่น"]),
    "VN": ("{:,.0f}đ", 25000, ["GHN", "GHTK", "Viettel Post"], ["Hà Nội", "TP.HCM", "Đà Nẵng"]),
    "ES": ("{:.2f} €", 0.92, ["Correos", "SEUR", "MRW"], ["Madrid", "Sevilla", "Valencia"]),
    "MX": ("${:,.0f} MXN", 18, ["Estafeta", "DHL", "Paquetexpress"], ["CDMX", "Guadalajara", "Monterrey"]),
    "CN": ("¥{:.2f}", 7.2, ["顺丰", "中通", "圆通"], ["上海", "广州", "成都"]),
    "MY": ("RM {:.2f}", 4.6, ["Pos Laju", "J&T Express", "Ninja Van"], ["Kuala Lumpur", "Penang", "Johor Bahru"]),
}


def market_phone(rng, m):
    d = lambda n: digits(rng, n)  # noqa: E731
    return rng.choice({
        "US": ["+1 ({}) {}-{}".format(rng.randint(201, 989), rng.randint(200, 999), d(4)), "({}) {}-{}".format(rng.randint(201, 989), rng.randint(200, 999), d(4))],
        "UK": ["+44 7{} {}".format(d(3), d(6)), "07{} {}".format(d(3), d(6))],
        "SG": ["+65 9{} {}".format(d(3), d(4)), "8{} {}".format(d(3), d(4))],
        "PH": ["+63 917 {} {}".format(d(3), d(4)), "0917 {} {}".format(d(3), d(4))],
        "ID": ["+62 812-{}-{}".format(d(4), d(4)), "0812-{}-{}".format(d(4), d(4)), "08{}{}".format(d(2), d(8))],
        "TH": ["+66 81 {} {}".format(d(3), d(4)), "08{}-{}-{}".format(d(1), d(3), d(4))],
        "VN": ["+84 90 {} {}".format(d(3), d(4)), "09{} {} {}".format(d(1), d(3), d(4))],
        "ES": ["+34 6{} {} {}".format(d(2), d(3), d(3)), "6{} {} {}".format(d(2), d(3), d(3))],
        "MX": ["+52 55 {} {}".format(d(4), d(4)), "55 {} {}".format(d(4), d(4))],
        "CN": ["+86 138 {} {}".format(d(4), d(4)), "1{}{}".format(rng.randint(3, 9), d(9))],
        "MY": ["+60 12-{} {}".format(d(3), d(4)), "012-{} {}".format(d(3), d(4))],
    }[m])


def market_id(rng, m):
    d = lambda n: digits(rng, n)  # noqa: E731
    letters = "ABCDEFGHJKLMNPQRSTVWXYZ"
    L = lambda n: "".join(rng.choice(letters) for _ in range(n))  # noqa: E731
    return rng.choice({
        "US": ["{}-{}-{}".format(d(3), d(2), d(4))],
        "UK": ["{}{} {} {} {} {}".format(rng.choice("ABCEGHJKLMNPRSTWXYZ"), rng.choice("ABCEGHJKLMNPRSTWXYZ"), d(2), d(2), d(2), rng.choice("ABCD"))],
        "SG": ["S{}{}".format(d(7), L(1)), "T{}{}".format(d(7), L(1))],
        "PH": ["{}-{}-{}-{}".format(d(4), d(4), d(4), d(4))],
        "ID": ["3{}".format(d(15))],
        "TH": ["{}-{}-{}-{}-{}".format(rng.randint(1, 8), d(4), d(5), d(2), d(1))],
        "VN": ["0{}".format(d(11))],
        "ES": ["{}{}".format(d(8), L(1)), "{}{}{}".format(rng.choice("XYZ"), d(7), L(1))],
        "MX": ["{}{}{}{}{}".format(L(4), d(6), rng.choice("HM"), L(5), d(2))],
        "CN": ["{}{}{:02d}{:02d}{}{}".format(d(6), rng.randint(1960, 2005), rng.randint(1, 12), rng.randint(1, 28),
                                             d(3), rng.choice("0123456789X"))],
        "MY": ["{}-{}-{}".format(d(6), d(2), d(4))],
    }[m])


def market_slots(rng, sl, C, m):
    """Local currency, carriers, cities, phones, ids and (for other languages)
    products, colours and numeric dates."""
    fmt, scale, carriers, cities = MARKET[m]
    v = rng.uniform(8.0, 480.0)
    sl["amount"] = fmt.format(v * scale)
    sl["amount2"] = fmt.format(v * rng.uniform(0.1, 0.7) * scale)
    sl["carrier"] = rng.choice(carriers)
    sl["city"] = rng.choice(cities)
    sl["phone"] = market_phone(rng, m)
    sl["idno"] = market_id(rng, m)
    if C.LANG != "en":
        sl["product"] = rng.choice(C.PRODUCTS)
        sl["colour"], sl["colour2"] = rng.sample(C.COLOURS, 2)
        day, month = rng.randint(1, 28), rng.randint(1, 12)
        sl["date"] = rng.choice(["{:02d}/{:02d}".format(day, month), "2026-{:02d}-{:02d}".format(month, day),
                                 "{}/{}".format(day, month)])


_CONTENT = {}


def content(lang):
    """The lines of one language: English from this file, others from synth_i18n."""
    if lang not in _CONTENT:
        import types
        if lang == "en":
            g = globals()
            c = types.SimpleNamespace(**{k: g[k] for k in (
                "LEAVES", "OOS", "OOS_FOLLOW", "OOS_AGENT", "NOISE", "VAGUE", "BUYER_CLOSE", "GENERIC_L2",
                "ASIDE_PRE", "ASIDE_POST", "GREET_AGENT", "EMAIL_GREET_AGENT", "AGENT_ASK", "AGENT_CLOSE",
                "ANGRY_PRE", "ANGRY_POST", "POLITE_PRE", "POLITE_POST", "SELLER_ADD", "SELLER_GENERIC",
                "AMBIG_PRE", "PRODUCTS", "COLOURS")})
            c.L2_NAMES = NAMES
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import synth_i18n
            c = synth_i18n.load(lang)
        c.LANG = lang
        c.ID_LINE = ID_LINE[lang]
        c.PHONE_LINE = PHONE_LINE[lang]
        _CONTENT[lang] = c
    return _CONTENT[lang]


# ============================================================== case assembly
REGIONS = ["EU", "US", "APAC", "LATAM"]
REGION_W = [0.35, 0.3, 0.2, 0.15]
CHANNELS = ["chat", "email", "app"]
CHANNEL_W = [0.5, 0.2, 0.3]


def make_case(rng, leaf, leaf_ids, lang="en"):
    """Return (turns, region, channel); turns is a list of (speaker, text).

    `lang` other than "en" (only with --langs) takes the buyer's lines from
    that language's module; in a share of those cases (MIX_SHARE) the agent
    answers in English and the buyer switches to English once, as in chats
    with cross-border support teams.
    """
    C = content(lang)
    if lang == "en" and not MULTI:
        region = rng.choices(REGIONS, REGION_W)[0]
        channel = rng.choices(CHANNELS, CHANNEL_W)[0]
        sl = make_slots(rng, region)
    else:
        region = rng.choice(MARKETS[lang])
        channel = rng.choices(CHANNELS, CHANNEL_W)[0]
        sl = make_slots(rng, MONEY_REGION[region])
        market_slots(rng, sl, C, region)
    A = C
    mixed = lang != "en" and rng.random() < MIX_SHARE
    if mixed:
        A = content("en")
    sl["agent"] = rng.choice(AGENT_NAMES)
    register = rng.choices(["neutral", "polite", "angry"], [0.5, 0.3, 0.2])[0]
    trate = rng.choice([0.0, 0.0, 0.02, 0.04, 0.08])
    if lang in ("th", "zh"):
        trate = 0.0  # keyboard typos of Latin script; IME slips are another matter
    turns = []

    def buyer(t):
        t = fill(t, sl)
        if lang == "en":
            t = paraphrase(rng, t, 0.5)
        t = lower_app(rng, typo(rng, t, trate), channel)
        turns.append(("buyer", t))

    def agent(t):
        turns.append(("agent", fill(t, sl)))

    LEAVES, OOS, OOS_FOLLOW, OOS_AGENT = C.LEAVES, C.OOS, C.OOS_FOLLOW, C.OOS_AGENT
    NOISE, VAGUE, BUYER_CLOSE, GENERIC_L2 = C.NOISE, C.VAGUE, C.BUYER_CLOSE, C.GENERIC_L2
    ASIDE_PRE, ASIDE_POST = C.ASIDE_PRE, C.ASIDE_POST
    GREET_AGENT, EMAIL_GREET_AGENT, AGENT_ASK = A.GREET_AGENT, A.EMAIL_GREET_AGENT, A.AGENT_ASK
    AGENT_CLOSE, OOS_AGENT = A.AGENT_CLOSE, A.OOS_AGENT

    def register_wrap(rng, text, register):
        return wrap_register(rng, text, register, C)

    if leaf is None:  # out of scope
        if channel != "email" and rng.random() < 0.6:
            agent(rng.choice(GREET_AGENT))
        buyer(register_wrap(rng, rng.choice(OOS), register))
        if rng.random() < 0.5:
            agent(rng.choice(AGENT_ASK[1:2] + OOS_AGENT))
            buyer(rng.choice(OOS_FOLLOW))
        agent(rng.choice(OOS_AGENT))
        if rng.random() < 0.5:
            buyer(rng.choice(BUYER_CLOSE))
        return turns, region, channel

    c = LEAVES[leaf]
    # opening
    if channel == "email":
        if rng.random() < 0.3:
            agent(rng.choice(EMAIL_GREET_AGENT))
    elif rng.random() < 0.75:
        agent(rng.choice(GREET_AGENT))
    if rng.random() < 0.08:
        buyer(rng.choice(NOISE))
    main = rng.choice(c["o"])
    mode = rng.random()
    vague = mode < 0.5
    if mode < 0.25:
        # generic opener at L2 level; the specifics come in the follow-up details
        buyer(register_wrap(rng, rng.choice(GENERIC_L2).replace("{x}", C.L2_NAMES[TAX[leaf][1]].lower()), register))
        agent(rng.choice(AGENT_ASK))
        buyer(main if rng.random() < 0.8 else rng.choice(c["d"][:2]) + " " + main)
    elif vague:
        buyer(register_wrap(rng, rng.choice(VAGUE), register))
        agent(rng.choice(AGENT_ASK))
        buyer(main)
    else:
        buyer(register_wrap(rng, main, register))
    # second issue mentioned in passing (often a sibling under the same L1)
    if rng.random() < P_ASIDE:
        if rng.random() < 0.6:
            pool = [l for l in leaf_ids if TAX[l][0] == TAX[leaf][0] and l != leaf]
        else:
            pool = leaf_ids
        other = rng.choice(pool)
        if other != leaf:
            o = fill(rng.choice(LEAVES[other]["o"]), sl)
            o = o[0].lower() + o[1:]
            buyer(rng.choice(ASIDE_PRE) + o.rstrip(".") + rng.choice(ASIDE_POST))
    if MULTI:
        if rng.random() < 0.08:
            buyer(rng.choice(C.ID_LINE))
        if rng.random() < 0.08:
            buyer(rng.choice(C.PHONE_LINE))
        if mixed and rng.random() < 0.5:
            turns.append(("buyer", fill(rng.choice(content("en").LEAVES[leaf]["d"]), sl)))
    # middle
    if not vague or rng.random() < 0.5:
        agent(rng.choice(AGENT_ASK))
    if mode >= 0.25 and rng.random() < 0.45:
        buyer(rng.choice(c["d"]))
    if rng.random() < 0.1:
        buyer(rng.choice(NOISE))
    if "s" in c and rng.random() < 0.3:
        turns.append(("system", fill(rng.choice(c["s"]), sl)))
    elif rng.random() < 0.2:
        turns.append(("system", rng.choice(["[system] Customer tier: gold", "[system] Previous contacts: 2",
                                              "[system] Conversation transferred from virtual assistant",
                                              "[system] Customer tier: standard", "[system] Language: " + lang])))
    if "sel" in c and rng.random() < 0.3:
        agent(rng.choice(A.SELLER_ADD))
        turns.append(("seller", fill(rng.choice(c["sel"]), sl)))
        if rng.random() < 0.6:
            buyer(register_wrap(rng, rng.choice(c["d"]), register))
    elif rng.random() < 0.06:
        turns.append(("seller", fill(rng.choice(C.SELLER_GENERIC), sl)))
    if rng.random() < 0.12 and len(c["d"]) > 1:
        buyer(rng.choice(c["d"]))
    # resolution
    if "a" in c and rng.random() < 0.2:
        agent(rng.choice(c["a"]))
    if rng.random() < 0.03:
        # deliberately ambiguous: a confusable sibling's phrasing in passing (true label kept)
        sib = [l for l in leaf_ids if l != leaf and TAX[l][:2] == TAX[leaf][:2]]
        if sib:
            amb = fill(rng.choice(LEAVES[rng.choice(sib)]["d"]), sl)
            buyer(C.AMBIG_PRE + amb[0].lower() + amb[1:])
    agent(rng.choice(AGENT_CLOSE))
    if rng.random() < 0.55:
        buyer(rng.choice(BUYER_CLOSE))
    return turns, region, channel


TAX = {}
NAMES = {}
P_ASIDE = 0.45


def transcript(turns):
    out = []
    for sp, t in turns:
        if sp == "system" and t.startswith("[system] "):
            out.append(t)
        else:
            out.append("[{}] {}".format(sp, t.replace("\n", " ")))
    return "\n".join(out)


def plan(rng, leaf_ids, n_cases, oos_share):
    """Deterministic list of leaf ids (None = out of scope), mildly imbalanced."""
    weights = [rng.uniform(0.55, 1.6) for _ in leaf_ids]
    n_oos = int(round(n_cases * oos_share))
    n_in = n_cases - n_oos
    tot = sum(weights)
    counts = [max(8, int(n_in * w / tot)) for w in weights]
    i = 0
    while sum(counts) < n_in:
        counts[i % len(counts)] += 1
        i += 1
    items = [None] * n_oos
    for lid, cnt in zip(leaf_ids, counts):
        items += [lid] * cnt
    rng.shuffle(items)
    return items


def pick_lang(rng, langs):
    """The language of the next case: English alone draws nothing."""
    return langs[0] if len(langs) == 1 else rng.choice(langs)


def iter_cases(rng, leaf_ids, n_cases, oos_share, id_prefix, langs=("en",)):
    """Stream cases without materialising the corpus (for --format turn with huge N)."""
    for i in range(n_cases):
        leaf = None if rng.random() < oos_share else leaf_ids[rng.randrange(len(leaf_ids))]
        lang = pick_lang(rng, langs)
        turns, region, channel = make_case(rng, leaf, leaf_ids, lang)
        yield "{}{:07d}".format(id_prefix, i + 1), leaf, turns, region, channel, lang


def labels(leaf):
    return TAX[leaf] if leaf else ("", "", "")


CASE_COLS = ["id", "text", "l1", "l2", "l3", "region", "channel"]
TURN_COLS = ["case_id", "turn", "speaker", "text", "l1", "l2", "l3", "region", "channel"]


def lang_col(lang):
    return [lang] if MULTI else []


def write_case_rows(w, cases):
    for cid, leaf, turns, region, channel, lang in cases:
        w.writerow([cid, transcript(turns), *labels(leaf), region, channel, *lang_col(lang)])


def write_turn_rows(w, cases):
    for cid, leaf, turns, region, channel, lang in cases:
        lab = labels(leaf)
        for k, (sp, t) in enumerate(turns):
            if sp == "system" and t.startswith("[system] "):
                t = t[len("[system] "):]
            w.writerow([cid, k, sp, t.replace("\n", " "), *lab, region, channel, *lang_col(lang)])


def open_out(path):
    if path in (None, "-"):
        return io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    return open(path, "w", encoding="utf-8", newline="")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Deterministic synthetic aftersales case generator (stdlib only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python3 scripts/synth.py --seed 7 --splits data/aftersales\n"
               "  python3 scripts/synth.py --seed 1 --cases 1000 --out cases.csv\n"
               "  python3 scripts/synth.py --seed 3 --format turn --cases 150000 --out turns.csv\n")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    ap.add_argument("--taxonomy", default=os.path.join(here, "..", "data", "taxonomy.yaml"),
                    help="taxonomy YAML (default data/taxonomy.yaml)")
    ap.add_argument("--cases", type=int, default=6000, help="number of cases (default 6000)")
    ap.add_argument("--format", choices=["case", "turn"], default="case", help="output layout (default case)")
    ap.add_argument("--out", default="-", help="output file ('-' = stdout); ignored with --splits")
    ap.add_argument("--splits", metavar="DIR", help="write DIR/train.csv, DIR/val.csv, DIR/test.csv (case format)")
    ap.add_argument("--ratios", default="0.7,0.1,0.2", help="train,val,test ratios for --splits")
    ap.add_argument("--oos-share", type=float, default=0.06, help="share of out-of-scope cases (default 0.06)")
    ap.add_argument("--sample-turns", metavar="FILE", help="with --splits: also write a turn-level sample of test cases")
    ap.add_argument("--sample-cases", type=int, default=50, help="cases in --sample-turns (default 50)")
    ap.add_argument("--langs", metavar="CODES",
                    help="comma-separated languages, e.g. en,id,th,vi,es,zh: each case draws one, buyers write "
                         "in it with their market's money, phones and ids, and a `lang` column is added "
                         "(default: English only, no `lang` column)")
    ap.add_argument("--mix-share", type=float, default=0.2,
                    help="with --langs: share of non-English cases where the agent answers in English and "
                         "the buyer switches to English once (default 0.2)")
    args = ap.parse_args(argv)
    langs = ["en"]
    if args.langs:
        global MULTI, MIX_SHARE
        sys.path.insert(0, here)
        import synth_i18n
        langs = [x.strip() for x in args.langs.split(",") if x.strip()]
        bad = [x for x in langs if x != "en" and x not in synth_i18n.LANGS]
        if bad or not langs:
            sys.exit("synth.py: --langs: unknown language(s) {}; known: en, {}".format(bad, ", ".join(synth_i18n.LANGS)))
        MULTI, MIX_SHARE = True, args.mix_share

    TAX.update(load_taxonomy(args.taxonomy))
    leaf_ids = sorted(TAX)
    missing = [l for l in leaf_ids if l not in LEAVES]
    extra = [l for l in LEAVES if l not in TAX]
    if missing or extra:
        sys.exit("synth.py: taxonomy/content mismatch: missing content for {}, unknown ids {}".format(missing, extra))
    if MULTI:
        l2_ids = sorted({v[1] for v in TAX.values()})
        for lang in langs:
            if lang != "en":
                errs = synth_i18n.validate(synth_i18n.load(lang), leaf_ids, l2_ids)
                if errs:
                    sys.exit("synth.py: synth_i18n/{}.py: {} (and {} more)".format(lang, errs[0], len(errs) - 1))
    case_cols = CASE_COLS + lang_col("lang")
    turn_cols = TURN_COLS + lang_col("lang")
    rng = __import__("random").Random(args.seed)

    if not args.splits:
        out = open_out(args.out)
        w = csv.writer(out, lineterminator="\n")
        if args.format == "case":
            w.writerow(case_cols)
            write_case_rows(w, iter_cases(rng, leaf_ids, args.cases, args.oos_share, "C", langs))
        else:
            w.writerow(turn_cols)
            write_turn_rows(w, iter_cases(rng, leaf_ids, args.cases, args.oos_share, "C", langs))
        out.flush()
        if out is not sys.stdout:
            out.close()
        return 0

    ratios = [float(x) for x in args.ratios.split(",")]
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6:
        sys.exit("synth.py: --ratios must be three numbers summing to 1")
    items = plan(rng, leaf_ids, args.cases, args.oos_share)
    cases = []
    for i, leaf in enumerate(items):
        lang = pick_lang(rng, langs)
        turns, region, channel = make_case(rng, leaf, leaf_ids, lang)
        cases.append(("AS{:06d}".format(i + 1), leaf, turns, region, channel, lang))
    by = {}
    for c in cases:
        # stratified by leaf, and by language too in a multilingual corpus
        by.setdefault((c[1] or "", c[5] if MULTI else ""), []).append(c)
    parts = {"train": [], "val": [], "test": []}
    for key in sorted(by):
        grp = by[key]
        n = len(grp)
        n_test = max(1, int(round(n * ratios[2])))
        n_val = max(1, int(round(n * ratios[1])))
        parts["test"] += grp[:n_test]
        parts["val"] += grp[n_test:n_test + n_val]
        parts["train"] += grp[n_test + n_val:]
    os.makedirs(args.splits, exist_ok=True)
    for name, rows in parts.items():
        rows.sort(key=lambda c: c[0])
        with open(os.path.join(args.splits, name + ".csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(case_cols)
            write_case_rows(w, rows)
        print("{}: {} cases".format(os.path.join(args.splits, name + ".csv"), len(rows)), file=sys.stderr)
    if args.sample_turns:
        sample = parts["test"][:args.sample_cases]
        with open(args.sample_turns, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(turn_cols)
            write_turn_rows(w, sample)
        print("{}: {} cases".format(args.sample_turns, len(sample)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
