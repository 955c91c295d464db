// Forwards Low_Ink__e platform events to the receiver: the trigger collects them, the
// Queueable (SignedEventPublisher) signs and posts them, since triggers cannot call out.
trigger LowInkForwarder on Low_Ink__e (after insert) {
    List<Object> messages = new List<Object>();
    for (Low_Ink__e event : Trigger.new) {
        Map<String, Object> payload = new Map<String, Object>{
            'CreatedDate' => event.CreatedDate,
            'CreatedById' => event.CreatedById,
            'Printer_Model__c' => event.Printer_Model__c,
            'Serial_Number__c' => event.Serial_Number__c,
            'Ink_Percentage__c' => event.Ink_Percentage__c
        };
        messages.add(SignedEventPublisher.eventMessage('/event/Low_Ink__e', event, payload));
    }
    System.enqueueJob(new SignedEventPublisher(JSON.serialize(new Map<String, Object>{ 'events' => messages })));
}
